package load

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"taskflow/internal/testkit"
)

// TestStreamsResumeWithoutLoss: streams cut by the server again and again (their tokens
// expire every second and a half) while several users write resume from their last
// event, and end where the database is: none stale, none lost, no list but the first.
func TestStreamsResumeWithoutLoss(t *testing.T) {
	base, _ := startServer(t, testkit.DatabaseURL(t), "MAX_WRITES_PER_USER=1000")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		followers []*testkit.Follower
		wg        sync.WaitGroup
		users     = []string{testkit.NewUserID(), testkit.NewUserID(), testkit.NewUserID()}
	)
	for _, u := range users {
		for range 2 {
			f := testkit.NewFollower(base, u, func() string { return testkit.ShortToken(t, u, 1500*time.Millisecond) })
			followers = append(followers, f)
			wg.Go(func() { f.Run(ctx, 10*time.Millisecond) })
		}
	}
	var ids []int64
	for i := range 600 {
		u := users[i%len(users)]
		token, tasks := testkit.Token(t, u), fmt.Sprintf("%s/api/%s/tasks", base, u)
		switch {
		case i%4 == 0 || len(ids) < 3:
			_, body := send(http.DefaultClient, "POST", tasks, token, "", fmt.Sprintf(`{"title":"task %d"}`, i))
			var task testkit.Task
			json.Unmarshal(body, &task)
			ids = append(ids, task.ID)
		case i%7 == 0:
			send(http.DefaultClient, "DELETE", fmt.Sprintf("%s/%d", tasks, ids[0]), token, "", "")
			ids = ids[1:]
		default:
			send(http.DefaultClient, "PATCH", fmt.Sprintf("%s/%d/complete", tasks, ids[i%len(ids)]), token, "", "")
		}
		time.Sleep(5 * time.Millisecond)
	}
	reconnects := 0
	for _, f := range followers {
		if ok, diff := f.Converges(listOf(t, base, f.UserID()), 5*time.Second); !ok {
			t.Errorf("a follower: %s", diff)
		}
		c := f.Counts()
		if c.Stale > 0 || c.Lists != 1 || c.Resyncs > 0 {
			t.Errorf("a follower: %d stale events, %d lists, %d resyncs; want 0, 1, 0", c.Stale, c.Lists, c.Resyncs)
		}
		reconnects += c.Reconnects
	}
	cancel()
	wg.Wait()
	if reconnects < 2*len(followers) {
		t.Errorf("%d reconnects in all: the test did not cut the streams", reconnects)
	}
	t.Logf("%d followers, %d reconnects", len(followers), reconnects)
}
