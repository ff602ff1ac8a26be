-- Applied by the server at every start, so every statement must be idempotent.
-- The advisory lock serialises concurrent starts of several instances: without it two
-- CREATE TABLE IF NOT EXISTS racing each other can fail on the catalog's unique index.
-- The whole file runs as one simple-protocol query, i.e. in one implicit transaction,
-- so the transaction-scoped lock is held until the last statement.
SELECT pg_advisory_xact_lock(7419260113);

CREATE TABLE IF NOT EXISTS tasks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     text        NOT NULL,
    title       text        NOT NULL,
    description text,
    completed   boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),

    -- These mirror the API's validation so that no other writer (a migration, a psql
    -- session, a bug) can store what the API would refuse.
    CONSTRAINT tasks_user_id_check     CHECK (octet_length(user_id) BETWEEN 1 AND 255),
    CONSTRAINT tasks_title_check       CHECK (char_length(title) BETWEEN 1 AND 200 AND btrim(title) <> ''),
    CONSTRAINT tasks_description_check CHECK (char_length(description) <= 1000)
);

-- Every query is scoped by user_id; the default list order is (created_at, id), so this one
-- index serves the scoping, the default order in both directions and keyset-like paging.
-- Other sort keys sort one user's rows in memory, which is cheap at the sizes a todo list
-- reaches; an index per sort key would make every toggle a non-HOT update (updated_at).
CREATE INDEX IF NOT EXISTS tasks_user_created_idx ON tasks (user_id, created_at, id);

-- How many tasks each user owns, kept by the create and delete statements (store.go),
-- which check MAX_TASKS_PER_USER against it under this row's lock. Filled from the tasks
-- when the table is first made, so an existing database upgrades in place.
DO $$
BEGIN
    IF to_regclass('task_counts') IS NULL THEN
        CREATE TABLE task_counts (
            user_id text PRIMARY KEY,
            tasks   integer NOT NULL
        );
        INSERT INTO task_counts (user_id, tasks) SELECT user_id, count(*) FROM tasks GROUP BY user_id;
    END IF;
END $$;
