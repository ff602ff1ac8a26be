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

CREATE TABLE IF NOT EXISTS tasks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     text        NOT NULL,
    title       text        NOT NULL,
    description text,
    completed   boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    version     bigint      NOT NULL DEFAULT nextval('task_versions'),

    -- These mirror the API's validation so that no other writer (a migration, a psql
    -- session, a bug) can store what the API would refuse.
    CONSTRAINT tasks_user_id_check     CHECK (octet_length(user_id) BETWEEN 1 AND 255),
    CONSTRAINT tasks_title_check       CHECK (char_length(title) BETWEEN 1 AND 200 AND btrim(title) <> ''),
    CONSTRAINT tasks_description_check CHECK (char_length(description) <= 1000)
);

DO $$
BEGIN
    -- Databases made before versions: every existing task gets one of its own (once: the
    -- table is rewritten under an exclusive lock, a second or so per million tasks).
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'tasks'::regclass AND attname = 'version') THEN
        ALTER TABLE tasks ADD COLUMN version bigint NOT NULL DEFAULT nextval('task_versions');
    END IF;
    -- Every query is scoped by user_id; the default list order is (created_at, id), so
    -- this one index serves the scoping, the default order both ways and keyset-like
    -- paging. Other sort keys sort one user's rows in memory, cheap at the sizes a todo
    -- list reaches; an index per sort key would make every toggle a non-HOT update.
    IF to_regclass('tasks_user_created_idx') IS NULL THEN
        CREATE INDEX tasks_user_created_idx ON tasks (user_id, created_at, id);
    END IF;
END $$;

-- How many tasks each user owns, kept by a trigger, so that every writer keeps it right
-- (psql, and older instances during a rolling deploy). The create statement checks
-- MAX_TASKS_PER_USER against it under the row's lock (store.go). When the trigger is
-- first made, the tasks already there are counted, in the same transaction, after the
-- trigger has locked the table: no write falls between the two.
CREATE OR REPLACE FUNCTION tasks_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_counts AS c (user_id, tasks) VALUES (NEW.user_id, 1)
        ON CONFLICT (user_id) DO UPDATE SET tasks = c.tasks + 1;
    ELSE
        UPDATE task_counts SET tasks = tasks - 1 WHERE user_id = OLD.user_id;
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
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = 'tasks'::regclass AND tgname = 'tasks_count') THEN
        CREATE TRIGGER tasks_count AFTER INSERT OR DELETE ON tasks
            FOR EACH ROW EXECUTE FUNCTION tasks_count();
        INSERT INTO task_counts (user_id, tasks) SELECT user_id, count(*) FROM tasks GROUP BY user_id
        ON CONFLICT (user_id) DO UPDATE SET tasks = excluded.tasks;
    END IF;
END $$;

-- The answers to creates and toggles sent with an Idempotency-Key, written by the statement
-- that writes the task, so that a retry gets the first answer again and writes nothing,
-- on any instance. Forgotten after 24 hours (Store.ExpireKeys).
DO $$
BEGIN
    IF to_regclass('idempotency_keys') IS NULL THEN
        CREATE TABLE idempotency_keys (
            user_id    text        NOT NULL,
            key        text        NOT NULL,
            request    bytea       NOT NULL, -- SHA-256 of the method, path and body
            task       json        NOT NULL, -- the task the first answer carried
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (user_id, key)
        );
        CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
    END IF;
END $$;

-- Live updates: every change of a task notifies on taskflow_tasks from the statement that
-- makes it, so that it reaches each instance's listener when, and only if, it commits
-- (events.go). A trigger, so that every writer notifies, psql and older instances too.
-- The user is named by the SHA-256 of their id, always 64 characters: with the title's 200
-- and the description's 1000 characters at the six bytes JSON may escape each into, a
-- notification stays under NOTIFY's 8000 bytes (TestTheLargestTaskFitsANotification).
CREATE OR REPLACE FUNCTION tasks_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('taskflow_tasks', json_build_object(
            'user', encode(sha256(convert_to(OLD.user_id, 'UTF8')), 'hex'),
            'op', 'deleted', 'id', OLD.id)::text);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('taskflow_tasks', json_build_object(
        'user', encode(sha256(convert_to(NEW.user_id, 'UTF8')), 'hex'),
        'op', CASE TG_OP WHEN 'INSERT' THEN 'created' ELSE 'updated' END,
        'task', json_build_object(
            'id', NEW.id, 'title', NEW.title, 'description', NEW.description,
            'completed', NEW.completed, 'created_at', NEW.created_at,
            'updated_at', NEW.updated_at, 'version', NEW.version))::text);
    RETURN NEW;
END $$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = 'tasks'::regclass AND tgname = 'tasks_notify') THEN
        CREATE TRIGGER tasks_notify AFTER INSERT OR UPDATE OR DELETE ON tasks
            FOR EACH ROW EXECUTE FUNCTION tasks_notify();
    END IF;
END $$;
