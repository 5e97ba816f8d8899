-- nightshift's store on PostgreSQL, version 1. Records are serde JSON in `doc`
-- (bytea); the columns beside it are what queries select and order by.

CREATE SEQUENCE nightshift_run_ids;
-- Lease epochs come from one sequence, so no epoch is ever handed out twice, whichever
-- instance claims.
CREATE SEQUENCE nightshift_epochs;

CREATE TABLE nightshift_events (
    id text PRIMARY KEY,
    received_at timestamptz NOT NULL,
    -- Whether ingest made or joined a run with it (events without runs age out alone).
    has_runs boolean NOT NULL,
    doc bytea NOT NULL
);
CREATE INDEX nightshift_events_without_runs ON nightshift_events (received_at) WHERE NOT has_runs;

CREATE TABLE nightshift_runs (
    id bigint PRIMARY KEY,
    automation text NOT NULL,
    state text NOT NULL,
    finished boolean NOT NULL,
    -- `Run::group()`: the flow-control group.
    group_key text NOT NULL,
    -- The task's repository, when the run has a task.
    repo text,
    -- Leased or running and holding a worker (`runs::queue::holds_worker`).
    holds_worker boolean NOT NULL,
    -- The parent this run is part of or follows (`Run.parent.run`).
    parent bigint,
    finished_at timestamptz,
    lease_expires_at timestamptz,
    updated_at timestamptz NOT NULL,
    doc bytea NOT NULL
);
CREATE INDEX nightshift_runs_queued ON nightshift_runs (id) WHERE state = 'queued';
CREATE INDEX nightshift_runs_unfinished ON nightshift_runs (id) WHERE NOT finished;
CREATE INDEX nightshift_runs_group ON nightshift_runs (group_key, id) WHERE NOT finished;
CREATE INDEX nightshift_runs_working ON nightshift_runs (repo) WHERE holds_worker;
CREATE INDEX nightshift_runs_working_groups ON nightshift_runs (group_key) WHERE holds_worker;
CREATE INDEX nightshift_runs_leases ON nightshift_runs (lease_expires_at) WHERE lease_expires_at IS NOT NULL AND NOT finished;
CREATE INDEX nightshift_runs_parent ON nightshift_runs (parent, id) WHERE parent IS NOT NULL;
CREATE INDEX nightshift_runs_automation ON nightshift_runs (automation, id);
CREATE INDEX nightshift_runs_state ON nightshift_runs (state, id);
CREATE INDEX nightshift_runs_finished_at ON nightshift_runs (finished_at) WHERE finished;

CREATE TABLE nightshift_activities (
    run bigint NOT NULL,
    seq bigint NOT NULL,
    doc bytea NOT NULL,
    PRIMARY KEY (run, seq)
);

CREATE TABLE nightshift_logs (
    run bigint NOT NULL,
    seq bigint NOT NULL,
    at timestamptz NOT NULL,
    text text NOT NULL,
    PRIMARY KEY (run, seq)
);

CREATE TABLE nightshift_memory (
    automation text NOT NULL,
    key text NOT NULL,
    expires_at timestamptz,
    doc bytea NOT NULL,
    PRIMARY KEY (automation, key)
);

-- Who holds an automation's dedupe key, until when.
CREATE TABLE nightshift_dedupe (
    automation text NOT NULL,
    key text NOT NULL,
    run bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (automation, key)
);

-- The latest run created in a flow-control group, for cooldowns.
CREATE TABLE nightshift_cooldowns (
    group_key text PRIMARY KEY,
    run bigint NOT NULL,
    at timestamptz NOT NULL,
    until timestamptz NOT NULL
);

CREATE TABLE nightshift_schedules (
    automation text NOT NULL,
    trigger text NOT NULL,
    -- `ScheduleState::last_slot`: a write with an older one is ignored, so progress
    -- never moves backwards when instances write it in any order.
    last_slot timestamptz NOT NULL,
    doc bytea NOT NULL,
    PRIMARY KEY (automation, trigger)
);

CREATE TABLE nightshift_outbox (
    run bigint NOT NULL,
    target integer NOT NULL,
    kind text NOT NULL,
    -- pending, in_flight, sent, failed (`runs::outbox::EntryState`).
    state text NOT NULL,
    next_at timestamptz NOT NULL,
    -- While in flight: the instance that began the attempt, and when (by its clock).
    -- Another may make the attempt again, unsure, once it is abandoned (outbox.rs).
    began_by text,
    began_at timestamptz,
    doc bytea NOT NULL,
    PRIMARY KEY (run, target, kind)
);
CREATE INDEX nightshift_outbox_unsettled ON nightshift_outbox (next_at) WHERE state IN ('pending', 'in_flight');

-- The newest run that told a thread (`runs::followup`).
CREATE TABLE nightshift_threads (
    thread text PRIMARY KEY,
    run bigint NOT NULL
);

-- One row per maintenance duty (lease sweeps, retention, the outbox): the instance
-- that does it until `expires_at`, renewed while it lives.
CREATE TABLE nightshift_maintenance (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
