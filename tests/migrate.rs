//! dp-migrate against a real PostgreSQL cluster and real SQLite files.

use crate::util::{sh, sync_release, Dir, Outcome, PgCluster, TestCommand};
use std::process::Command;

const RECORDS: &str = "{\"host\":\"web1\",\"roles\":[\"web\"]}\n{\"host\":\"web2\",\"roles\":[\"web\",\"migrate\"]}\n";

fn migrate(dir: &Dir, url: &str, args: &[&str], input: &str) -> Outcome {
    TestCommand::new("dp-migrate")
        .current_dir(dir.path())
        .env("DATABASE_URL", url)
        .args(args)
        .stdin(input)
        .run()
}

/// A migrations directory: an expand step, a seed, a slow one, and a post (contract) step.
fn migrations(dir: &Dir) {
    dir.write(
        "migrations/1_create_users.sql",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n",
    );
    dir.write(
        "migrations/2_add_email.sql",
        "ALTER TABLE users ADD COLUMN email TEXT;\nCREATE TABLE runs (n INTEGER);\nINSERT INTO runs VALUES (2);\n",
    );
    dir.write(
        "migrations/3_legacy.sql",
        "CREATE TABLE legacy (x INTEGER);\nINSERT INTO runs VALUES (3);\n",
    );
    dir.write(
        "migrations/post/4_drop_legacy.sql",
        "DROP TABLE legacy;\nINSERT INTO runs VALUES (4);\n",
    );
}

fn sqlite_query(db: &std::path::Path, sql: &str) -> String {
    sh(
        "python3",
        &[
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print('\\n'.join('|'.join(map(str, r)) for r in c.execute(sys.argv[2])))",
            db.to_str().unwrap(),
            sql,
        ],
    )
    .trim()
    .to_string()
}

/// The same checks, by database: how to query it.
enum Target<'a> {
    Pg(&'a PgCluster, String),
    Sqlite(std::path::PathBuf),
}

impl Target<'_> {
    fn url(&self) -> String {
        match self {
            Target::Pg(pg, db) => pg.url(db),
            Target::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }
    fn query(&self, sql: &str) -> String {
        match self {
            Target::Pg(pg, db) => pg.psql(db, sql),
            Target::Sqlite(path) => sqlite_query(path, sql),
        }
    }
    fn secret(&self) -> Option<&str> {
        match self {
            Target::Pg(pg, _) => Some(&pg.password),
            Target::Sqlite(_) => None,
        }
    }
}

fn targets<'a>(pg: &'a PgCluster, dir: &Dir, name: &str) -> Vec<Target<'a>> {
    let url = pg.create_db(name);
    let db = url.rsplit('/').next().unwrap().to_string();
    vec![
        Target::Pg(pg, db),
        Target::Sqlite(dir.path().join(format!("{name}.sqlite3"))),
    ]
}

fn assert_no_secret(t: &Target, out: &Outcome) {
    if let Some(secret) = t.secret() {
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "the password leaked:\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

#[test]
fn applies_pre_then_post_once_and_reports_status() {
    let pg = PgCluster::shared();
    let dir = Dir::new("migrate-phases");
    migrations(&dir);
    for t in targets(pg, &dir, "phases") {
        let url = t.url();
        // The plan changes nothing.
        let plan = migrate(&dir, &url, &["--dry-run"], "");
        plan.code(0);
        let lines: Vec<serde_json::Value> = plan
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let would: Vec<(i64, bool)> = lines
            .iter()
            .map(|l| {
                (
                    l["version"].as_i64().unwrap(),
                    l["would_apply"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(would, [(1, true), (2, true), (3, true), (4, false)]);
        assert_eq!(lines[3]["phase"], "post");
        assert_eq!(lines[0]["checksum"].as_str().unwrap().len(), 96, "SHA-384");
        if let Target::Sqlite(p) = &t {
            assert!(!p.exists(), "a dry run creates nothing");
        } else {
            assert_eq!(
                t.query("SELECT to_regclass('_sqlx_migrations') IS NULL"),
                "t"
            );
        }

        let out = migrate(&dir, &url, &["--phase", "pre"], RECORDS);
        out.code(0);
        assert_no_secret(&t, &out);
        for r in out.records() {
            assert_eq!(r.steps["migrate"]["applied"], serde_json::json!([1, 2, 3]));
            assert_eq!(r.steps["migrate"]["phase"], "pre");
            assert!(r.error.is_none());
        }
        assert_eq!(
            t.query("SELECT count(*) FROM legacy"),
            "0",
            "expand ran, contract did not"
        );
        let again = migrate(&dir, &url, &[], RECORDS);
        assert_eq!(
            again.code(0).records()[0].steps["migrate"]["applied"],
            serde_json::json!([])
        );

        let out = migrate(&dir, &url, &["--phase", "post"], RECORDS);
        assert_eq!(
            out.code(0).records()[0].steps["migrate_post"]["applied"],
            serde_json::json!([4])
        );
        assert_eq!(
            t.query("SELECT n FROM runs ORDER BY n"),
            "2\n3\n4",
            "each migration ran once"
        );
        assert_eq!(
            t.query("SELECT version, description, success FROM _sqlx_migrations ORDER BY version")
                .replace("|t", "|1")
                .replace("|true", "|1"),
            "1|create users|1\n2|add email|1\n3|legacy|1\n4|drop legacy|1"
        );
        let status = migrate(&dir, &url, &["status"], "");
        status.code(0);
        let st: Vec<serde_json::Value> = status
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(st.len(), 4);
        assert!(
            st.iter()
                .all(|s| s["checksum_ok"] == true && s["applied_at"].is_string()),
            "{}",
            status.stdout
        );
        assert_no_secret(&t, &status);
    }
}

#[test]
fn the_table_has_sqlx_layout() {
    let pg = PgCluster::shared();
    let dir = Dir::new("migrate-layout");
    migrations(&dir);
    let url = pg.create_db("layout");
    migrate(&dir, &url, &[], RECORDS).code(0);
    let db = url.rsplit('/').next().unwrap();
    let cols = pg.psql(
        db,
        "SELECT column_name || ':' || data_type || ':' || is_nullable FROM information_schema.columns \
         WHERE table_name = '_sqlx_migrations' ORDER BY ordinal_position",
    );
    assert_eq!(
        cols,
        "version:bigint:NO\ndescription:text:NO\ninstalled_on:timestamp with time zone:NO\n\
         success:boolean:NO\nchecksum:bytea:NO\nexecution_time:bigint:NO"
    );
    // The checksum is SHA-384 of the file, as sqlx computes it.
    let sum = pg.psql(
        db,
        "SELECT encode(checksum, 'hex') FROM _sqlx_migrations WHERE version = 1",
    );
    let file = std::fs::read(dir.path().join("migrations/1_create_users.sql")).unwrap();
    let out = Command::new("sha384sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&file)?;
            c.wait_with_output()
        });
    let expected = String::from_utf8_lossy(&out.unwrap().stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(sum, expected);
}

#[test]
fn a_failing_migration_is_rolled_back_and_fails_every_record() {
    let pg = PgCluster::shared();
    let dir = Dir::new("migrate-fail");
    migrations(&dir);
    for t in targets(pg, &dir, "fail") {
        dir.write(
            "migrations/5_broken.sql",
            "CREATE TABLE half (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n",
        );
        let url = t.url();
        let out = migrate(&dir, &url, &["--lock-timeout", "5s"], RECORDS);
        out.code(1);
        assert_no_secret(&t, &out);
        let recs = out.records();
        assert_eq!(recs.len(), 2, "no record is dropped");
        for r in &recs {
            let e = r.error.clone().expect("every record fails");
            assert_eq!(e.step, "migrate");
            assert!(
                e.message.contains("migration 5 (") && e.message.contains("5_broken.sql"),
                "{}",
                e.message
            );
            assert!(
                e.message.contains("no_such_table"),
                "the database's error: {}",
                e.message
            );
        }
        // Migrations before it stay applied; it left nothing behind.
        assert_eq!(t.query("SELECT max(version) FROM _sqlx_migrations"), "3");
        let half = match &t {
            Target::Pg(..) => t.query("SELECT to_regclass('half') IS NULL"),
            Target::Sqlite(_) => {
                t.query("SELECT count(*) = 0 FROM sqlite_master WHERE name = 'half'")
            }
        };
        assert!(
            half == "t" || half == "1",
            "the failed migration was rolled back"
        );
        // The lock was released: a fixed run goes through at once.
        dir.write(
            "migrations/5_broken.sql",
            "CREATE TABLE half (x INTEGER);\n",
        );
        let out = migrate(&dir, &url, &["--lock-timeout", "2s"], RECORDS);
        assert_eq!(
            out.code(0).records()[0].steps["migrate"]["applied"],
            serde_json::json!([5])
        );
    }
}

#[test]
fn an_edited_applied_migration_is_refused_before_anything_runs() {
    let pg = PgCluster::shared();
    let dir = Dir::new("migrate-edited");
    migrations(&dir);
    for t in targets(pg, &dir, "edited") {
        let url = t.url();
        migrate(&dir, &url, &[], RECORDS).code(0);
        let original =
            std::fs::read_to_string(dir.path().join("migrations/2_add_email.sql")).unwrap();
        dir.write(
            "migrations/2_add_email.sql",
            format!("{original}-- edited\n"),
        );
        dir.write("migrations/6_new.sql", "CREATE TABLE newer (x INTEGER);\n");
        let out = migrate(&dir, &url, &[], RECORDS);
        out.code(1);
        let e = out.records()[0].error.clone().unwrap();
        assert!(
            e.message.starts_with("refused before applying anything"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("2_add_email.sql") && e.message.contains("checksum"),
            "{}",
            e.message
        );
        assert_eq!(
            t.query("SELECT max(version) FROM _sqlx_migrations"),
            "3",
            "6 was not applied"
        );
        let status = migrate(&dir, &url, &["status"], "");
        assert!(
            status
                .stdout
                .contains("\"version\":2,\"name\":\"add email\",\"phase\":\"pre\""),
            "{}",
            status.stdout
        );
        assert!(
            status.stdout.contains("\"checksum_ok\":false"),
            "{}",
            status.stdout
        );
        dir.write("migrations/2_add_email.sql", &original);
        std::fs::remove_file(dir.path().join("migrations/6_new.sql")).unwrap();
    }
}

#[test]
fn pending_migrations_older_than_applied_ones_are_refused() {
    let dir = Dir::new("migrate-order");
    migrations(&dir);
    let db = dir.path().join("order.sqlite3");
    let url = format!("sqlite://{}", db.display());
    migrate(&dir, &url, &[], RECORDS).code(0);
    dir.write(
        "migrations/0_forgotten.sql",
        "CREATE TABLE forgotten (x INTEGER);\n",
    );
    let out = migrate(&dir, &url, &[], RECORDS);
    out.code(1);
    assert!(
        out.stdout.contains("older than applied migration 3"),
        "{}",
        out.stdout
    );
    let out = migrate(&dir, &url, &["--allow-out-of-order"], RECORDS);
    assert_eq!(
        out.code(0).records()[0].steps["migrate"]["applied"],
        serde_json::json!([0])
    );
}

#[test]
fn a_failed_host_upstream_means_nothing_is_migrated() {
    let dir = Dir::new("migrate-barrier");
    migrations(&dir);
    let db = dir.path().join("barrier.sqlite3");
    let input = "{\"host\":\"web1\"}\n{\"host\":\"web2\",\"error\":{\"step\":\"sync\",\"message\":\"disk full\"}}\n";
    let out = migrate(&dir, &format!("sqlite://{}", db.display()), &[], input);
    out.code(1);
    let recs = out.records();
    assert_eq!(recs.len(), 2);
    let held = recs[0].error.clone().unwrap();
    assert_eq!(held.kind, dp_core::ErrorKind::NotSwitched);
    assert_eq!(held.message, "not switched: web2 failed in sync: disk full");
    assert!(recs[0].steps.is_empty());
    assert_eq!(recs[1].error.clone().unwrap().message, "disk full");
    assert!(!db.exists(), "the database was not touched");
}

#[test]
fn two_concurrent_runs_apply_each_migration_once() {
    let pg = PgCluster::shared();
    let dir = Dir::new("migrate-concurrent");
    migrations(&dir);
    // Slow enough that the second run has to wait for the first.
    dir.write("migrations/5_slow.sql", "INSERT INTO runs VALUES (5);\n");
    let pg_slow = "SELECT pg_sleep(1);\nINSERT INTO runs VALUES (5);\n";
    let sqlite_slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) SELECT count(*) FROM c;\nINSERT INTO runs VALUES (5);\n";
    for t in targets(pg, &dir, "concurrent") {
        dir.write(
            "migrations/5_slow.sql",
            if matches!(t, Target::Pg(..)) {
                pg_slow
            } else {
                sqlite_slow
            },
        );
        let url = t.url();
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| migrate(&dir, &url, &["--lock-timeout", "60s"], RECORDS));
            let b = s.spawn(|| migrate(&dir, &url, &["--lock-timeout", "60s"], RECORDS));
            (a.join().unwrap(), b.join().unwrap())
        });
        a.code(0);
        b.code(0);
        let applied: Vec<serde_json::Value> = [&a, &b]
            .iter()
            .map(|o| o.records()[0].steps["migrate"].clone())
            .collect();
        let mut all: Vec<i64> = applied
            .iter()
            .flat_map(|s| {
                s["applied"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_unstable();
        assert_eq!(
            all,
            [1, 2, 3, 5],
            "each applied exactly once across both runs: {applied:?}"
        );
        assert!(
            applied.iter().any(|s| s["waited_ms"].as_u64().is_some()),
            "one run reports it waited: {applied:?}"
        );
        assert_eq!(t.query("SELECT n FROM runs ORDER BY n"), "2\n3\n5");
    }
}

#[test]
fn exec_mode_runs_once_on_the_migrate_host_in_its_release() {
    let dir = Dir::new("migrate-exec");
    dir.write(
        "src/manage.sh",
        "echo migrated-by-$(basename \"$PWD\") >> \"$DP_TEST_OUT\"\n",
    );
    let tool = dir.write(
        "src/.venv/bin/mytool",
        "#!/bin/sh\necho from-release-venv\n",
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let roots = [dir.path().join("h1"), dir.path().join("h2")];
    let input: String = roots
        .iter()
        .enumerate()
        .map(|(i, root)| {
            let roles = if i == 1 {
                "[\"web\",\"migrate\"]"
            } else {
                "[\"web\"]"
            };
            format!(
                "{{\"host\":\"h{}\",\"transport\":\"local\",\"root\":\"{}\",\"roles\":{roles}}}\n",
                i + 1,
                root.display()
            )
        })
        .collect();
    let synced = sync_release(&dir.path().join("src"), input, "r1");
    let marker = dir.path().join("ran.txt");
    let out = TestCommand::new("dp-migrate")
        .current_dir(dir.path())
        .env("DP_TEST_OUT", &marker)
        .args(["--exec", "sh manage.sh && mytool >> \"$DP_TEST_OUT\""])
        .stdin(synced.clone())
        .run();
    out.code(0);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "migrated-by-r1\nfrom-release-venv\n",
        "once, in the release"
    );
    for r in out.records() {
        assert_eq!(r.steps["migrate"]["mode"], "exec");
        assert_eq!(r.steps["migrate"]["host"], "h2");
    }
    let out = TestCommand::new("dp-migrate")
        .current_dir(dir.path())
        .args([
            "--exec",
            "echo 'django.db.utils.OperationalError: no such table' >&2; exit 1",
        ])
        .stdin(synced)
        .run();
    out.code(1);
    for r in out.records() {
        let e = r.error.unwrap();
        assert!(
            e.message.contains("migration command on h2 failed")
                && e.message.contains("no such table"),
            "{}",
            e.message
        );
    }
}

#[test]
fn via_reaches_the_database_through_an_ssh_host() {
    let pg = PgCluster::shared();
    let fleet = crate::util::Fleet::shared();
    let dir = Dir::new("migrate-via");
    migrations(&dir);
    let url = pg.create_db("via");
    let db = url.rsplit('/').next().unwrap().to_string();
    let root = fleet.root_for(0, "migrate-via");
    let input = fleet.record_line(0, &root);
    let host = fleet.hosts[0].name.clone();
    let out = migrate(&dir, &url, &["--via", &host], &input);
    out.code(0);
    let stats = &out.records()[0].steps["migrate"];
    assert_eq!(stats["applied"], serde_json::json!([1, 2, 3]));
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM _sqlx_migrations"), "3");
    // Every byte between dp-migrate and the database went through the SSH tunnel.
    assert_eq!(stats["via"], host.as_str());
    assert!(stats["via_bytes"].as_u64().unwrap() > 2000, "{stats}");
    assert!(!out.stdout.contains(&pg.password) && !out.stderr.contains(&pg.password));
}

#[test]
fn no_transaction_migrations_run_outside_and_a_failed_one_leaves_a_dirty_row() {
    let pg = PgCluster::shared();
    let dir = Dir::new("migrate-notx");
    migrations(&dir);
    for t in targets(pg, &dir, "notx") {
        let no_tx = match t {
            // Refused inside a transaction block: proves it ran outside one.
            Target::Pg(..) => {
                "-- no-transaction\nCREATE INDEX CONCURRENTLY users_name ON users (name);\n"
            }
            Target::Sqlite(_) => "-- no-transaction\nVACUUM;\n",
        };
        dir.write("migrations/5_outside.sql", no_tx);
        let url = t.url();
        let out = migrate(&dir, &url, &[], RECORDS);
        assert_eq!(
            out.code(0).records()[0].steps["migrate"]["applied"],
            serde_json::json!([1, 2, 3, 5])
        );
        let row = t.query("SELECT success FROM _sqlx_migrations WHERE version = 5");
        assert!(row == "t" || row == "1", "{row}");

        // A failing no-transaction migration cannot be rolled back: its row stays dirty,
        // and the next run refuses before applying anything.
        dir.write(
            "migrations/6_broken.sql",
            "-- no-transaction\nINSERT INTO nowhere VALUES (1);\n",
        );
        migrate(&dir, &url, &[], RECORDS).code(1);
        let out = migrate(&dir, &url, &[], RECORDS);
        out.code(1);
        let e = out.records()[0].error.clone().unwrap();
        assert!(
            e.message.contains("migration 6 (broken) is dirty"),
            "{}",
            e.message
        );
        std::fs::remove_file(dir.path().join("migrations/6_broken.sql")).unwrap();
        std::fs::remove_file(dir.path().join("migrations/5_outside.sql")).unwrap();
    }
}
