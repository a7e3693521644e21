//! The Django example (examples/django) end to end, as a Django team would run it:
//! Django 5.2 LTS served by gunicorn on two sshd hosts behind a real nginx, installed
//! offline from the wheels `make test` downloads once into a cache, `collectstatic` as the
//! build step, `manage.py migrate` as the migration command, a client counting failed
//! requests through nginx while each deploy runs.

use crate::util::{free_port, get, under_load, Dir, Fleet, Nginx, Outcome, TestCommand};
use std::path::{Path, PathBuf};

/// The wheel cache `scripts/test-env.sh` fills (examples/django/wheels.sh).
fn wheels() -> PathBuf {
    let dir = std::env::var_os("DP_DJANGO_WHEELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/dp/django-wheels")
        });
    assert!(
        dir.join(".requirements.sha256").exists(),
        "no Django wheels in {}: run `make test` (scripts/test-env.sh downloads them once)",
        dir.display()
    );
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "__pycache__" || name == "vendor" || name == "staticfiles" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// Stops every process started under the hosts' roots (gunicorn masters and workers).
struct Servers(Vec<PathBuf>);
impl Drop for Servers {
    fn drop(&mut self) {
        for root in &self.0 {
            let _ = std::process::Command::new("pkill")
                .args(["-TERM", "-f"])
                .arg(root.join("current/.venv/bin/gunicorn"))
                .status();
        }
    }
}

struct Site {
    dir: Dir,
    roots: Vec<PathBuf>,
    ports: Vec<u16>,
    url: String,
}

impl Site {
    fn dp(&self, args: &[&str]) -> Outcome {
        TestCommand::new("dp")
            .current_dir(self.dir.path())
            .env("DATABASE_URL", &self.url)
            .env("DP_CACHE_DIR", self.dir.path().join("cache"))
            .args(args)
            .run()
    }

    /// `dp deploy --release RELEASE` while a client sends requests through `nginx`:
    /// the outcome, and how many requests succeeded and failed.
    fn deploy_under_load(&self, nginx: &Nginx, release: &str) -> (Outcome, usize, usize) {
        under_load(nginx.port, || self.dp(&["deploy", "--release", release]))
    }

    /// What each host's gunicorn answers on /healthz, directly.
    fn health(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| {
                let url = format!("http://127.0.0.1:{p}/healthz");
                let out = std::process::Command::new("python3")
                    .args([
                        "-c",
                        "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())",
                        &url,
                    ])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            })
            .collect()
    }

    fn current(&self) -> Vec<String> {
        self.roots
            .iter()
            .map(|r| {
                std::fs::read_link(r.join("current"))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Rows of django_migrations for the notes app.
    fn migrations(&self) -> Vec<String> {
        let db = self.url.trim_start_matches("sqlite:///");
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys; [print(r[0]) for r in sqlite3.connect(sys.argv[1]).execute(\"SELECT name FROM django_migrations WHERE app = 'notes' ORDER BY id\")]",
                db,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// How often each host's gunicorn master was told to reload.
    fn hups(&self) -> Vec<usize> {
        self.roots
            .iter()
            .map(|r| {
                std::fs::read_to_string(r.join("gunicorn.log"))
                    .unwrap_or_default()
                    .matches("Handling signal: hup")
                    .count()
            })
            .collect()
    }
}

/// The example copied into a test directory, deployed to the first two fleet hosts.
fn site(fleet: &Fleet) -> Site {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/django");
    let dir = Dir::new("django");
    copy_tree(&example.join("site"), &dir.path().join("site"));
    copy_tree(&wheels(), &dir.path().join("site/vendor/wheels"));
    let roots: Vec<PathBuf> = (0..2).map(|i| fleet.root_for(i, "django")).collect();
    let ports = vec![free_port(), free_port()];
    let db = dir.path().join("db.sqlite3");
    let url = format!("sqlite:///{}", db.display());
    for root in &roots {
        dir.write(
            root.join("shared/.env").to_str().unwrap(),
            // nginx passes its upstream name, `app`, as the Host.
            format!(
                "SECRET_KEY=test-secret-key-for-the-django-example\nDATABASE_URL={url}\nALLOWED_HOSTS=app\n"
            ),
        );
    }
    // The example's deploy.toml as it is, with this fleet as its stage.
    let config = std::fs::read_to_string(example.join("deploy.toml")).unwrap();
    let config = config[..config.find("[stages.local]").unwrap()]
        .replace("health_timeout = \"30s\"", "health_timeout = \"15s\"");
    let hosts: Vec<String> = (0..2)
        .map(|i| {
            let roles = if i == 0 { "\"web\", \"migrate\"" } else { "\"web\"" };
            format!(
                "  {{ name = \"web{}\", addr = \"127.0.0.1\", port = {}, root = \"{}\", roles = [{roles}], vars = {{ port = {} }} }},",
                i + 1,
                fleet.hosts[i].port,
                roots[i].display(),
                ports[i]
            )
        })
        .collect();
    dir.write(
        "deploy.toml",
        format!(
            "known_hosts = \"{}\"\nidentity = \"{}\"\n{config}[stages.test]\nuser = \"{}\"\nhosts = [\n{}\n]\n",
            fleet.known_hosts.display(),
            fleet.client_key.display(),
            fleet.user,
            hosts.join("\n")
        ),
    );
    Site {
        dir,
        roots,
        ports,
        url,
    }
}

#[test]
fn a_django_site_behind_nginx_deploys_migrates_rolls_back_and_reloads_without_failed_requests() {
    let fleet = Fleet::shared();
    let site = site(fleet);
    let _servers = Servers(site.roots.clone());

    // r1: the virtualenv is built offline on each host, collectstatic runs, the tables
    // are created once, gunicorn starts.
    let out = site.dp(&["deploy", "--release", "r1"]);
    out.code(0);
    assert_eq!(site.health(), ["ok r1", "ok r1"]);
    assert_eq!(site.migrations(), ["0001_initial"]);
    for (r, root) in out.records().iter().zip(&site.roots) {
        assert_eq!(r.steps["deps"]["cache"], "built");
        assert_eq!(r.steps["deps"]["build"], true, "collectstatic ran");
        assert!(root
            .join("releases/r1/staticfiles/notes/style.css")
            .exists());
    }
    let nginx = Nginx::start(site.dir.path(), &site.ports);
    get(nginx.port).expect("the site answers through nginx");

    // r2: a new expand migration and new code. No request fails, the migration is
    // applied exactly once, before the first switch (r2's code needs its column), and
    // the virtualenv is reused: requirements.txt did not change.
    site.dir.write(
        "site/notes/migrations/0002_note_pinned.py",
        "from django.db import migrations, models\n\n\n\
         class Migration(migrations.Migration):\n    dependencies = [(\"notes\", \"0001_initial\")]\n    \
         operations = [migrations.AddField(\"note\", \"pinned\", models.BooleanField(default=False))]\n",
    );
    let models = std::fs::read_to_string(site.dir.path().join("site/notes/models.py")).unwrap();
    site.dir.write(
        "site/notes/models.py",
        models.replace(
            "    created = models.DateTimeField(auto_now_add=True)\n",
            "    created = models.DateTimeField(auto_now_add=True)\n    pinned = models.BooleanField(default=False)\n",
        ),
    );
    let (out, ok, failed) = site.deploy_under_load(&nginx, "r2");
    eprintln!("r2: {ok} requests ok, {failed} failed");
    out.code(0);
    assert_eq!(failed, 0, "no request fails during a good rollout");
    assert!(ok > 0, "the client ran during the deploy");
    assert_eq!(site.migrations(), ["0001_initial", "0002_note_pinned"]);
    for r in out.records() {
        assert_eq!(r.steps["deps"]["cache"], "hit");
        assert!(r.steps["migrate"]["ms"].is_u64());
    }
    assert_eq!(site.health(), ["ok r2", "ok r2"]);
    let hups = site.hups();
    assert_eq!(
        hups,
        [1, 1],
        "r2 went live through a HUP of the running master"
    );

    // r3: its WSGI module fails to import. The health check sees it (the old workers
    // answered for a moment, the master then died), web1 is switched back and its
    // gunicorn runs r2 again, web2 is never switched, exit 1.
    let wsgi = std::fs::read_to_string(site.dir.path().join("site/mysite/wsgi.py")).unwrap();
    site.dir.write(
        "site/mysite/wsgi.py",
        format!("{wsgi}\nraise RuntimeError(\"this release cannot start\")\n"),
    );
    let (out, ok, failed) = site.deploy_under_load(&nginx, "r3");
    eprintln!("r3 (broken): {ok} requests ok, {failed} failed");
    out.code(1);
    let records = out.records();
    let e = records[0].error.clone().unwrap();
    assert_eq!(e.kind.as_str(), "switched-back", "{}", e.message);
    assert!(e.message.contains("switched back to r2"), "{}", e.message);
    assert_eq!(site.current(), ["releases/r2", "releases/r2"]);
    assert_eq!(site.health(), ["ok r2", "ok r2"]);
    assert_eq!(failed, 0, "nginx sent every request to a serving host");

    // Rollback after the failed deploy goes to the release live before r2 (r1), not to
    // r3, which never served; --to goes back to r2.
    let out = site.dp(&["rollback"]);
    out.code(0);
    assert_eq!(site.current(), ["releases/r1", "releases/r1"]);
    assert_eq!(site.health(), ["ok r1", "ok r1"]);
    site.dp(&["rollback", "--to", "r2"]).code(0);
    assert_eq!(site.health(), ["ok r2", "ok r2"]);

    // The same release again: a no-op, no restart.
    site.dir.write("site/mysite/wsgi.py", wsgi);
    let hups = site.hups();
    let out = site.dp(&["deploy", "--release", "r2"]);
    out.code(0);
    assert!(out.stderr.contains("already live"), "{}", out.stderr);
    assert_eq!(site.hups(), hups, "the restart command did not run");

    // An old gunicorn still holds the port while the restart command, finding no pid
    // file, starts another: the new one cannot bind, the old one answers "ok r2", and
    // the health check tells them apart.
    std::fs::remove_file(site.roots[0].join("gunicorn.pid")).unwrap();
    site.dir
        .write("site/notes/templates/notes/extra.txt", "r4\n");
    let out = site.dp(&["deploy", "--release", "r4"]);
    out.code(1);
    let e = out.records()[0].error.clone().unwrap();
    assert!(
        e.message.contains("does not contain \"ok r4\""),
        "{}",
        e.message
    );
    assert_eq!(site.current(), ["releases/r2", "releases/r2"]);
    assert_eq!(site.health(), ["ok r2", "ok r2"]);
}
