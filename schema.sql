-- Applied by the server at every start, so every statement must be idempotent, and must
-- take no lock on a table unless it has something to change: instances start while
-- others serve (a rolling deploy), and a lock that waits for one slow query holds up
-- every query after it. So the changes to existing tables are made only when missing.
-- The advisory lock serialises concurrent starts of several instances: without it two
-- CREATE TABLE IF NOT EXISTS racing each other can fail on the catalog's unique index.
-- The whole file runs as one simple-protocol query, i.e. in one implicit transaction,
-- so the transaction-scoped lock is held until the last statement.
SET LOCAL lock_timeout = '10s';
SELECT pg_advisory_xact_lock(7419260113);

-- Every write gives the task the next value of task_versions, so a version names one
-- state of one task, however close two writes come: it is the task's ETag. A list's ETag
-- is its tasks' count and a digest of their versions (store.go).
CREATE SEQUENCE IF NOT EXISTS task_versions;

-- These mirror the API's validation so that no other writer (a migration, a psql session,
-- a bug) can store what the API would refuse. They are domains, not CHECK constraints on
-- the table: a domain is checked when a value is stored in the column, so a toggle, which
-- stores none of them, checks nothing; PostgreSQL checks a table's CHECKs on every row a
-- statement writes, and parsed them again for each statement (docs/performance.md).
DO $$
BEGIN
    IF to_regtype('task_owner') IS NULL THEN
        CREATE DOMAIN task_owner AS text CHECK (octet_length(VALUE) BETWEEN 1 AND 255);
    END IF;
    IF to_regtype('task_title') IS NULL THEN
        CREATE DOMAIN task_title AS text CHECK (char_length(VALUE) BETWEEN 1 AND 200 AND btrim(VALUE) <> '');
    END IF;
    IF to_regtype('task_description') IS NULL THEN
        CREATE DOMAIN task_description AS text CHECK (char_length(VALUE) <= 1000);
    END IF;
END $$;

-- Whether a task's version meets a write's If-Match and If-None-Match, as versions:
-- allowed NULL allows any version, else the task must be in allowed; it must be in none
-- of refused (store.go's Condition). A SQL function of one expression, which PostgreSQL
-- inlines into each statement that calls it.
CREATE OR REPLACE FUNCTION version_allowed(version bigint, allowed bigint[], refused bigint[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT (allowed IS NULL OR version = ANY (allowed)) AND version <> ALL (refused) $$;

CREATE TABLE IF NOT EXISTS tasks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     task_owner  NOT NULL,
    title       task_title  NOT NULL,
    description task_description,
    completed   boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    version     bigint      NOT NULL DEFAULT nextval('task_versions'),
    -- The transactions that last changed the row and that made it: the feed of changes
    -- reads by them (internal/feed).
    changed_xid xid8        DEFAULT pg_current_xact_id(),
    created_xid xid8        DEFAULT pg_current_xact_id(),
    -- Whether the writer counted the task in task_counts itself, as the service's create
    -- does in its statement; the tasks_count_others trigger counts the rest.
    counted     boolean     NOT NULL DEFAULT false
);

DO $$
BEGIN
    -- Databases made before versions: every existing task gets one of its own (once: the
    -- table is rewritten under an exclusive lock, a second or so per million tasks).
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'tasks'::regclass AND attname = 'version') THEN
        ALTER TABLE tasks ADD COLUMN version bigint NOT NULL DEFAULT nextval('task_versions');
    END IF;
    -- Databases made before the feed: rows already there keep NULL, which the feed reads
    -- as older than every cursor (no rewrite, no long lock).
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'tasks'::regclass AND attname = 'changed_xid') THEN
        ALTER TABLE tasks ADD COLUMN changed_xid xid8;
        ALTER TABLE tasks ALTER COLUMN changed_xid SET DEFAULT pg_current_xact_id();
    END IF;
    -- Databases made before the domains: the columns take them (the table is read
    -- once, under an exclusive lock, to check its rows), and the CHECKs go.
    IF (SELECT atttypid FROM pg_attribute WHERE attrelid = 'tasks'::regclass AND attname = 'title') = 'text'::regtype THEN
        ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_user_id_check, DROP CONSTRAINT IF EXISTS tasks_title_check,
            DROP CONSTRAINT IF EXISTS tasks_description_check,
            ALTER COLUMN user_id TYPE task_owner, ALTER COLUMN title TYPE task_title, ALTER COLUMN description TYPE task_description;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'tasks'::regclass AND attname = 'counted') THEN
        ALTER TABLE tasks ADD COLUMN counted boolean NOT NULL DEFAULT false;
    END IF;
    -- Likewise: a task made before is never "created" after any cursor.
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'tasks'::regclass AND attname = 'created_xid') THEN
        ALTER TABLE tasks ADD COLUMN created_xid xid8;
        ALTER TABLE tasks ALTER COLUMN created_xid SET DEFAULT pg_current_xact_id();
    END IF;
    -- Every query is scoped by user_id; the default list order is (created_at, id), so
    -- this one index serves the scoping, the default order both ways and keyset-like
    -- paging. Other sort keys sort one user's rows in memory, cheap at the sizes a todo
    -- list reaches; an index per sort key would make every toggle a non-HOT update.
    IF to_regclass('tasks_user_created_idx') IS NULL THEN
        CREATE INDEX tasks_user_created_idx ON tasks (user_id, created_at, id);
    END IF;
END $$;

-- The feed of changes (changes.go). Every task row names the transaction that last
-- changed it (changed_xid: the insert's default, and every UPDATE of store.go sets it),
-- and every delete leaves a tombstone, so "what changed since a snapshot" is a read. A
-- writer outside the service that updates tasks must set version and changed_xid as
-- store.go's statements do, and send the wake-up of wakeups.go, or its change reaches
-- open streams only at their next periodic read.
--
-- The triggers keep two things that every writer must keep right, psql and older
-- instances included: how many tasks each user owns (the create statement checks
-- MAX_TASKS_PER_USER against it under the row's lock, and counts its own task there) and
-- the tombstones. They fire on a delete, and on an insert its writer did not count: an
-- update, the common write, and the service's create run no trigger at all.
CREATE OR REPLACE FUNCTION tasks_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_counts AS c (user_id, tasks) VALUES (NEW.user_id, 1)
        ON CONFLICT (user_id) DO UPDATE SET tasks = c.tasks + 1;
    ELSE
        UPDATE task_counts SET tasks = tasks - 1 WHERE user_id = OLD.user_id;
        INSERT INTO task_tombstones (user_id, id, created_at) VALUES (OLD.user_id, OLD.id, OLD.created_at);
    END IF;
    RETURN NULL;
END $$;

DO $$
BEGIN
    IF to_regclass('task_counts') IS NULL THEN
        CREATE TABLE task_counts (
            user_id text PRIMARY KEY,
            tasks   integer NOT NULL
        );
    END IF;
    -- A deleted task's place in the feed, kept for CHANGES_RETENTION. Its version is
    -- newer than any the task had, so versions only grow along the feed. Append-only: the
    -- BRIN index on deleted_at, which pruning reads, costs an insert almost nothing.
    IF to_regclass('task_tombstones') IS NULL THEN
        CREATE TABLE task_tombstones (
            user_id     text        NOT NULL,
            id          bigint      NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT '-infinity', -- the task's: the feed pages by (created_at, id)
            version     bigint      NOT NULL DEFAULT nextval('task_versions'),
            changed_xid xid8        NOT NULL DEFAULT pg_current_xact_id(),
            deleted_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX task_tombstones_user_idx ON task_tombstones (user_id, changed_xid);
        CREATE INDEX task_tombstones_deleted_at_idx ON task_tombstones USING brin (deleted_at);
    END IF;
    -- Tombstones made before the feed paged by (created_at, id), or by an older
    -- instance's trigger during a rolling deploy, come first in a page.
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'task_tombstones'::regclass AND attname = 'created_at') THEN
        ALTER TABLE task_tombstones ADD COLUMN created_at timestamptz NOT NULL DEFAULT '-infinity';
    END IF;
    -- The newest transaction whose tombstones pruning removed: a cursor that has not
    -- seen it may have missed a delete, and gets 410 (changes.go).
    IF to_regclass('changes_horizon') IS NULL THEN
        CREATE TABLE changes_horizon (xid xid8 NOT NULL);
        INSERT INTO changes_horizon VALUES ('0');
    END IF;
    -- After a crash, PostgreSQL may hand out again the ids of transactions whose end it had
    -- not yet written to disk (an abort does not wait for it), and a cursor must not take
    -- a new transaction for one it saw. Two rows guard against that (changes.go):
    -- - the incarnation, unlogged: a crash recovery empties it, and a promoted standby or
    --   a new Neon compute does not have it;
    -- - a transaction id known to be on disk, which the service's committing writes move
    --   on (wakeups.go, and each start below): recovery hands out no id below it again.
    -- A cursor of another incarnation counts from the lower of its xmin and that id.
    IF to_regclass('changes_incarnation') IS NULL THEN
        CREATE UNLOGGED TABLE changes_incarnation (one boolean PRIMARY KEY DEFAULT true CHECK (one), token text NOT NULL);
    END IF;
    -- It also holds the database's identity, which a cursor of another database lacks.
    IF to_regclass('changes_durable') IS NULL THEN
        CREATE TABLE changes_durable (xid xid8 NOT NULL);
        INSERT INTO changes_durable VALUES (pg_current_xact_id());
    END IF;
    -- Guarded, not ADD COLUMN IF NOT EXISTS: that takes its exclusive lock even when the
    -- column is there, and every list and read of the feed reads this table, so a start
    -- would wait for the slowest of them and hold up all that came after it.
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'changes_durable'::regclass AND attname = 'database') THEN
        ALTER TABLE changes_durable ADD COLUMN database text NOT NULL DEFAULT md5(random()::text || clock_timestamp()::text);
    END IF;
    -- Before creates counted themselves, tasks_track counted every insert. Its name stays
    -- (an older instance starting during a rolling deploy looks for it), on deletes only.
    IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = 'tasks'::regclass AND tgname = 'tasks_track' AND tgtype & 4 <> 0) THEN
        DROP TRIGGER tasks_track ON tasks;
        CREATE TRIGGER tasks_track AFTER DELETE ON tasks FOR EACH ROW EXECUTE FUNCTION tasks_track();
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = 'tasks'::regclass AND tgname = 'tasks_count_others') THEN
        CREATE TRIGGER tasks_count_others AFTER INSERT ON tasks FOR EACH ROW WHEN (NOT NEW.counted) EXECUTE FUNCTION tasks_track();
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = 'tasks'::regclass AND tgname = 'tasks_track') THEN
        -- Before the feed, tasks_count kept the counts (right already), and tasks_notify
        -- sent every change from the writing transaction, which serialized commits
        -- database-wide. On a first start, the tasks already there are counted in this
        -- transaction, after the trigger has locked the table: no write falls between.
        DROP TRIGGER IF EXISTS tasks_notify ON tasks;
        DROP FUNCTION IF EXISTS tasks_notify();
        CREATE TRIGGER tasks_track AFTER DELETE ON tasks FOR EACH ROW EXECUTE FUNCTION tasks_track();
        IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = 'tasks'::regclass AND tgname = 'tasks_count') THEN
            DROP TRIGGER tasks_count ON tasks;
            DROP FUNCTION tasks_count();
        ELSE
            INSERT INTO task_counts (user_id, tasks) SELECT user_id, count(*) FROM tasks GROUP BY user_id
            ON CONFLICT (user_id) DO UPDATE SET tasks = excluded.tasks;
        END IF;
    END IF;
END $$;

INSERT INTO changes_incarnation (token) VALUES (md5(random()::text || clock_timestamp()::text)) ON CONFLICT DO NOTHING;
UPDATE changes_durable SET xid = greatest(xid, pg_current_xact_id());

-- The answers to creates and toggles sent with an Idempotency-Key, written by the statement
-- that writes the task, so that a retry gets the first answer again and writes nothing,
-- on any instance. Forgotten after 24 hours (Store.PruneKeys).
DO $$
BEGIN
    IF to_regclass('idempotency_keys') IS NULL THEN
        CREATE TABLE idempotency_keys (
            user_id    text        NOT NULL,
            key        text        NOT NULL,
            request    bytea       NOT NULL, -- SHA-256 of the method, canonical path and body
            task       json        NOT NULL, -- the task the first answer carried
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (user_id, key)
        );
        CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
    END IF;
END $$;
