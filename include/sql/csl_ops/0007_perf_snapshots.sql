-- Performance report (csl_performance_report, `python -m csl snapshot|report`): statistics
-- snapshots and the reports made from them.
--
-- A snapshot copies the cumulative counters of pg_stat_statements, pg_stat_user_tables /
-- pg_statio_user_tables, pg_stat_user_indexes / pg_statio_user_indexes, sizes, connections by
-- state and replica lag at one moment; reports diff two snapshots. Counters are cumulative since
-- the statistics' last reset, so each snapshot keeps the reset times it saw: a reset (or an entry
-- deallocated and re-added) between two snapshots is detected and never gives negative deltas.
-- Children cascade from perf_snapshots, so retention is one DELETE.

CREATE TABLE csl_ops.perf_snapshots (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    taken_at            timestamptz NOT NULL DEFAULT now(),
    database_name       text        NOT NULL,
    pgss_stats_reset    timestamptz,          -- pg_stat_statements_info.stats_reset (NULL: extension absent)
    pgss_dealloc        bigint,               -- pg_stat_statements_info.dealloc
    db_stats_reset      timestamptz,          -- pg_stat_database.stats_reset of this database
    postmaster_start    timestamptz NOT NULL, -- a restart after a crash also resets statistics
    figures             jsonb       NOT NULL DEFAULT '{}',  -- database counters, connections, replicas
    capture_ms          integer     NOT NULL DEFAULT 0,
    rows_written        integer     NOT NULL DEFAULT 0
);
CREATE INDEX perf_snapshots_taken_idx ON csl_ops.perf_snapshots (taken_at);

-- Query texts once per query id (pg_stat_statements' normalised text with $n placeholders).
CREATE TABLE csl_ops.perf_queries (
    queryid     bigint      NOT NULL,
    query       text        NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queryid)
);

CREATE TABLE csl_ops.perf_snapshot_statements (
    snapshot_id          bigint           NOT NULL REFERENCES csl_ops.perf_snapshots (id) ON DELETE CASCADE,
    queryid              bigint           NOT NULL,
    userid               oid              NOT NULL,
    toplevel             boolean          NOT NULL,
    calls                bigint           NOT NULL,
    total_exec_time      double precision NOT NULL,
    rows                 bigint           NOT NULL,
    shared_blks_hit      bigint           NOT NULL,
    shared_blks_read     bigint           NOT NULL,
    shared_blks_dirtied  bigint           NOT NULL,
    temp_blks_read       bigint           NOT NULL,
    temp_blks_written    bigint           NOT NULL,
    blk_read_time        double precision NOT NULL,
    PRIMARY KEY (snapshot_id, queryid, userid, toplevel)
);

CREATE TABLE csl_ops.perf_snapshot_tables (
    snapshot_id          bigint NOT NULL REFERENCES csl_ops.perf_snapshots (id) ON DELETE CASCADE,
    relid                oid    NOT NULL,
    schema_name          text   NOT NULL,
    table_name           text   NOT NULL,
    seq_scan             bigint NOT NULL,
    seq_tup_read         bigint NOT NULL,
    idx_scan             bigint NOT NULL,
    idx_tup_fetch        bigint NOT NULL,
    n_tup_ins            bigint NOT NULL,
    n_tup_upd            bigint NOT NULL,
    n_tup_del            bigint NOT NULL,
    n_tup_hot_upd        bigint NOT NULL,
    n_live_tup           bigint NOT NULL,
    n_dead_tup           bigint NOT NULL,
    n_mod_since_analyze  bigint NOT NULL,
    heap_blks_read       bigint NOT NULL,
    heap_blks_hit        bigint NOT NULL,
    idx_blks_read        bigint NOT NULL,
    idx_blks_hit         bigint NOT NULL,
    table_bytes          bigint NOT NULL,
    index_bytes          bigint NOT NULL,
    total_bytes          bigint NOT NULL,
    reltuples            double precision NOT NULL,
    xid_age              integer NOT NULL,
    last_vacuum          timestamptz,
    last_autovacuum      timestamptz,
    last_analyze         timestamptz,
    last_autoanalyze     timestamptz,
    PRIMARY KEY (snapshot_id, relid)
);

CREATE TABLE csl_ops.perf_snapshot_indexes (
    snapshot_id     bigint  NOT NULL REFERENCES csl_ops.perf_snapshots (id) ON DELETE CASCADE,
    indexrelid      oid     NOT NULL,
    relid           oid     NOT NULL,
    schema_name     text    NOT NULL,
    table_name      text    NOT NULL,
    index_name      text    NOT NULL,
    idx_scan        bigint  NOT NULL,
    idx_tup_read    bigint  NOT NULL,
    idx_tup_fetch   bigint  NOT NULL,
    idx_blks_read   bigint  NOT NULL,
    idx_blks_hit    bigint  NOT NULL,
    size_bytes      bigint  NOT NULL,
    PRIMARY KEY (snapshot_id, indexrelid)
);

CREATE TABLE csl_ops.perf_reports (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_key              text        NOT NULL UNIQUE,   -- Airflow dag/run id, or cli__<time>
    created_at           timestamptz NOT NULL DEFAULT now(),
    window_start         timestamptz NOT NULL,
    window_end           timestamptz NOT NULL,
    snapshot_id          bigint REFERENCES csl_ops.perf_snapshots (id) ON DELETE SET NULL,
    baseline_snapshot_id bigint REFERENCES csl_ops.perf_snapshots (id) ON DELETE SET NULL,
    params               jsonb       NOT NULL DEFAULT '{}',
    summary              jsonb       NOT NULL DEFAULT '{}',
    data                 jsonb       NOT NULL DEFAULT '{}',  -- every table of the report, as rows
    html                 text        NOT NULL,
    path                 text                             -- where the files were written, if anywhere
);
CREATE INDEX perf_reports_created_idx ON csl_ops.perf_reports (created_at DESC);

COMMENT ON TABLE csl_ops.perf_snapshots IS
    'Statistics snapshots for the performance report; children cascade, retention deletes old rows.';
COMMENT ON TABLE csl_ops.perf_reports IS
    'One row per performance report: window, params, summary, every table (data) and the HTML page.';
