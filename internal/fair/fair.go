// Package fair shares the database between users, so that no account's habits, heavy or
// hostile, slow the others, and no honest request of a user is refused. Its rules:
//
//   - A user's database time is a budget, refilled at Rate and held up to Burst: what
//     the user's lists and reads of the feed cost is charged to it as measured, and while
//     it is spent the user's next heavy request waits for it to refill, not the others.
//   - A user runs at most Turns heavy statements at once; the rest wait their turn, in
//     order of arrival. So one user's burst cannot take the whole pool.
//   - Nothing is refused for being one of many: a request waits, at most until its
//     context ends (the client hangs up, or the server's deadline), and is then told
//     ErrBusy. A user who spends nothing waits for nothing.
//   - A turn is held only while the database works. A request writing its answer to a
//     slow client holds none (the callers read first, then write).
//
// Cheap requests (a task by its id, a write, which Rate limits by count) are not
// counted: they cost about what their HTTP request does.
package fair

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrBusy: a request waited for its user's turn until its context ended.
var ErrBusy = errors.New("the user's requests took all the database time they may; waited too long for a turn")

// Users holds each user's budget and turns. The zero value is not usable; see New.
type Users struct {
	Rate  time.Duration // budget refilled per second of wall time
	Burst time.Duration // most a user may hold: what a quiet user may spend at once
	Turns int

	mu    sync.Mutex
	users map[string]*user
	swept time.Time
	now   func() time.Time // tests move time
}

type user struct {
	budget  time.Duration // may be negative: a statement's cost is charged after it ran
	at      time.Time     // when budget was last brought up to date
	running int
	waiting []chan struct{} // in order of arrival; closed when it is that one's turn
}

// New shares database time between users: rate of it per second each, at most burst
// held, and turns statements at once.
func New(rate, burst time.Duration, turns int) *Users {
	return &Users{Rate: rate, Burst: burst, Turns: turns, users: map[string]*user{}, now: time.Now}
}

// Do runs f in one of userID's turns, once the user's budget is not spent, and charges
// the budget with how long f took.
func (us *Users) Do(ctx context.Context, userID string, f func() error) error {
	if err := us.enter(ctx, userID); err != nil {
		return err
	}
	start := us.now()
	defer func() { us.leave(userID, us.now().Sub(start)) }()
	return f()
}

func (us *Users) enter(ctx context.Context, userID string) error {
	us.mu.Lock()
	u := us.get(userID)
	if u.running < us.Turns && len(u.waiting) == 0 {
		if wait := us.refill(u); wait <= 0 {
			u.running++
			us.mu.Unlock()
			return nil
		}
	}
	turn := make(chan struct{})
	u.waiting = append(u.waiting, turn)
	if len(u.waiting) == 1 {
		us.schedule(userID, u)
	}
	us.mu.Unlock()
	select {
	case <-turn:
		return nil
	case <-ctx.Done():
		us.mu.Lock()
		defer us.mu.Unlock()
		select {
		case <-turn: // given meanwhile: give it on
			u.running--
			us.next(userID, u)
		default:
			for i, c := range u.waiting {
				if c == turn {
					u.waiting = append(u.waiting[:i], u.waiting[i+1:]...)
					break
				}
			}
		}
		return ErrBusy
	}
}

func (us *Users) leave(userID string, took time.Duration) {
	us.mu.Lock()
	defer us.mu.Unlock()
	u := us.get(userID)
	us.refill(u)
	u.budget -= took
	u.running--
	us.next(userID, u)
}

// next gives the turn to the first waiter if its user may go on now, or schedules it.
func (us *Users) next(userID string, u *user) {
	if len(u.waiting) == 0 {
		return
	}
	if u.running >= us.Turns {
		return // the leaving one will call again
	}
	if wait := us.refill(u); wait > 0 {
		us.schedule(userID, u)
		return
	}
	u.running++
	close(u.waiting[0])
	u.waiting = u.waiting[1:]
	us.next(userID, u)
}

// schedule calls next again once u's budget has refilled to zero.
func (us *Users) schedule(userID string, u *user) {
	wait := us.refill(u)
	if wait <= 0 {
		if u.running < us.Turns {
			us.next(userID, u)
		}
		return
	}
	time.AfterFunc(wait, func() {
		us.mu.Lock()
		defer us.mu.Unlock()
		us.next(userID, u)
	})
}

// refill brings u's budget up to date and says how long until it is not spent.
func (us *Users) refill(u *user) time.Duration {
	now := us.now()
	u.budget = min(us.Burst, u.budget+time.Duration(float64(now.Sub(u.at))*float64(us.Rate)/float64(time.Second)))
	u.at = now
	if u.budget >= 0 {
		return 0
	}
	return time.Duration(float64(-u.budget) * float64(time.Second) / float64(us.Rate))
}

func (us *Users) get(userID string) *user {
	if now := us.now(); now.Sub(us.swept) >= us.refillTime() {
		us.sweep()
		us.swept = now
	}
	u := us.users[userID]
	if u == nil {
		u = &user{budget: us.Burst, at: us.now()}
		us.users[userID] = u
	}
	return u
}

// sweep forgets the users with nothing running or waiting and a full budget: they hold
// nothing a new one would not. So memory is bounded by the users active within the time
// a budget takes to refill.
func (us *Users) sweep() {
	for id, u := range us.users {
		if u.running == 0 && len(u.waiting) == 0 && us.refill(u) == 0 && u.budget >= us.Burst {
			delete(us.users, id)
		}
	}
}

func (us *Users) refillTime() time.Duration {
	return time.Duration(float64(us.Burst) * float64(time.Second) / float64(us.Rate))
}

// Ready reports how long userID must wait before a statement of theirs may run: zero
// when the budget is not spent. For callers that run statements of many users together
// (the feed's reader), which charge each with Charge.
func (us *Users) Ready(userID string) time.Duration {
	us.mu.Lock()
	defer us.mu.Unlock()
	u := us.users[userID]
	if u == nil {
		return 0
	}
	return us.refill(u)
}

// Charge takes d from userID's budget.
func (us *Users) Charge(userID string, d time.Duration) {
	us.mu.Lock()
	defer us.mu.Unlock()
	u := us.get(userID)
	us.refill(u)
	u.budget -= d
}
