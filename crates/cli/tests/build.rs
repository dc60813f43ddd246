//! `hutch template build`: Dockerfiles built by a real server, each RUN in a
//! real build sandbox, and the result checked from inside sandboxes of the
//! new template — environment, user, working directory and files — plus
//! the layer cache, failing steps and rejected Dockerfiles.

use std::path::Path;
use std::process::Output;

use hutch_test_support::{Registry, RegistryAuthMode, TestDir, TestServer, debian_image};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `script` with `sh -c` in a fresh sandbox of `template`.
fn sh(server: &TestServer, template: &str, script: &str) -> String {
    server.cli_ok(&["run", template, "--", "sh", "-c", script])
}

/// Imports the Debian test image as template `debian`.
fn import_debian(server: &TestServer, allow_privilege_escalation: bool) {
    let extra: &[&str] = if allow_privilege_escalation {
        &["--allow-privilege-escalation"]
    } else {
        &[]
    };
    server.import(&debian_image(), "debian", extra);
}

fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn build(server: &TestServer, ctx: &Path, name: &str, extra: &[&str]) -> Output {
    let mut args = vec!["template", "build", "--name", name];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    server.cli(&args)
}

const DOCKERFILE: &str = r#"# A Dockerfile using every step Hutch supports.
ARG BASE=debian
FROM ${BASE}
ARG GREETING=hello
ENV PYTHONPATH=$PYTHONPATH:/extra \
    BUILT_WITH=${GREETING} \
    QUOTED="two  spaces" \
    LITERAL='$HOME'
RUN echo "$GREETING from $(id -un) in $(pwd)" > /built.txt && echo step-output && echo to-stderr >&2
COPY --chown=user:user app/ /srv/app/
COPY --chmod=600 secret.txt /srv/
ADD files.tar /opt/unpacked/
RUN rm /srv/app/remove-me.txt
USER builder
WORKDIR /srv/work
RUN id -un > whoami.txt && pwd > where.txt && echo "$HOME" > home.txt
CMD ["/bin/bash"]
"#;

fn context(dir: &Path) {
    write(dir, "Dockerfile", DOCKERFILE);
    write(dir, "app/main.py", "print('app')\n");
    write(dir, "app/lib/util.py", "X = 1\n");
    write(dir, "app/remove-me.txt", "gone\n");
    write(dir, "app/ignored.log", "not sent\n");
    write(dir, "secret.txt", "s3cret\n");
    write(dir, ".dockerignore", "**/*.log\n");
    // A tar for ADD to unpack.
    let src = dir.join("tarsrc");
    write(&src, "inner/hello.txt", "from the archive\n");
    let f = std::fs::File::create(dir.join("files.tar")).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", &src).unwrap();
    b.into_inner().unwrap();
    std::fs::remove_dir_all(&src).unwrap();
}

#[test]
fn dockerfile_build_runtime_view_cache_and_failures() {
    let server = TestServer::start();
    import_debian(&server, true);
    let ctx = TestDir::new();
    context(ctx.path());

    // First build: every step runs.
    let out = build(
        &server,
        ctx.path(),
        "app",
        &["--build-arg", "GREETING=bonjour"],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "build failed:\n{stdout}\n{stderr}\n{}",
        server.log_tail(40)
    );
    assert!(stdout.contains("built template app"), "{stdout}");
    assert!(
        stderr.contains("| step-output"),
        "RUN output is shown live:\n{stderr}"
    );
    assert!(stderr.contains("! to-stderr"), "{stderr}");
    assert!(stderr.contains("CMD"), "ignored CMD is noted:\n{stderr}");
    assert!(
        stderr.contains("0 of 8 layer steps from the cache"),
        "{stderr}"
    );

    // The runtime view: environment (environment.md: `ENV
    // PYTHONPATH=$PYTHONPATH:/extra` gives `/app/lib:/extra`), user and
    // working directory from the USER and WORKDIR steps.
    let view = sh(
        &server,
        "app",
        r#"echo "pp=$PYTHONPATH"; echo "bw=$BUILT_WITH"; echo "q=$QUOTED"; echo "lit=$LITERAL"; echo "greet=${GREETING-unset}"; echo "cfg=$MY_APP_CONFIG"; echo "user=$(id -un)"; echo "pwd=$(pwd)"; echo "home=$HOME""#,
    );
    for want in [
        "pp=/app/lib:/extra",
        "bw=bonjour",
        "q=two  spaces",
        "lit=$HOME",
        "greet=unset",
        "cfg=/etc/myapp/config.json",
        "user=builder",
        "pwd=/srv/work",
        "home=/home/builder",
    ] {
        assert!(
            view.lines().any(|l| l == want),
            "missing {want:?} in:\n{view}"
        );
    }
    // Through the login shell the SDKs use, too.
    let login = server.cli_ok(&[
        "run",
        "app",
        "--",
        "bash",
        "-l",
        "-c",
        "echo $PYTHONPATH; pwd; id -un",
    ]);
    assert_eq!(login, "/app/lib:/extra\n/srv/work\nbuilder\n");

    // The files the steps made.
    let files = sh(
        &server,
        "app",
        "cat /built.txt; stat -c '%U %a' /srv/app /srv/app/main.py /srv/secret.txt; \
         cat /opt/unpacked/inner/hello.txt; ls /srv/app; cat /srv/work/whoami.txt /srv/work/where.txt /srv/work/home.txt; \
         grep ^builder: /etc/passwd | cut -d: -f6,7; stat -c '%U' /home/builder /srv/work",
    );
    assert_eq!(
        files,
        "bonjour from root in /app\n\
         user 755\nuser 644\nroot 600\n\
         from the archive\n\
         lib\nmain.py\n\
         builder\n/srv/work\n/home/builder\n\
         /home/builder:/bin/bash\n\
         builder\nbuilder\n",
        "removed and .dockerignored files must be absent"
    );

    // Second build, nothing changed: every layer step from the cache.
    let out = build(
        &server,
        ctx.path(),
        "app",
        &["--build-arg", "GREETING=bonjour"],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("8 of 8 layer steps from the cache"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("| step-output"),
        "cached RUN steps do not run:\n{stderr}"
    );
    assert_eq!(
        sh(&server, "app", "cat /built.txt"),
        "bonjour from root in /app\n"
    );

    // A different build argument invalidates the RUN that sees it and
    // everything after; the COPY before it... follows it, so it reruns too.
    let out = build(
        &server,
        ctx.path(),
        "app",
        &["--build-arg", "GREETING=hola"],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("0 of 8 layer steps from the cache"),
        "{stderr}"
    );
    assert_eq!(
        sh(&server, "app", "cat /built.txt"),
        "hola from root in /app\n"
    );

    // Changing a copied file reruns that COPY and what follows only.
    write(ctx.path(), "secret.txt", "changed\n");
    let out = build(
        &server,
        ctx.path(),
        "app",
        &["--build-arg", "GREETING=hola"],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("2 of 8 layer steps from the cache"),
        "{stderr}"
    );
    let secret = server.cli_ok(&[
        "run",
        "app",
        "--user",
        "root",
        "--",
        "cat",
        "/srv/secret.txt",
    ]);
    assert_eq!(secret, "changed\n");

    // --no-cache runs everything.
    let out = build(
        &server,
        ctx.path(),
        "app",
        &["--build-arg", "GREETING=hola", "--no-cache"],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("0 of 8 layer steps from the cache"),
        "{stderr}"
    );
    assert!(stderr.contains("| step-output"), "{stderr}");

    // Only the newest template of the name is listed.
    let list = server.cli_ok(&["template", "list"]);
    assert_eq!(
        list.lines().filter(|l| l.starts_with("app ")).count(),
        1,
        "{list}"
    );
}

#[test]
fn failing_step_keeps_nothing_but_cached_layers() {
    let server = TestServer::start();
    import_debian(&server, false);
    let ctx = TestDir::new();
    write(
        ctx.path(),
        "Dockerfile",
        "FROM debian\nRUN echo first > /first.txt\nRUN echo about to fail && echo boom >&2 && exit 7\nRUN echo never\n",
    );
    let out = build(&server, ctx.path(), "broken", &[]);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "the failing step's exit code:\n{stderr}"
    );
    assert!(stderr.contains("boom"), "{stderr}");
    assert!(
        stderr.contains("line 3"),
        "the error names the line:\n{stderr}"
    );
    assert!(!stderr.contains("never"), "{stderr}");
    let list = server.cli_ok(&["template", "list"]);
    assert!(!list.contains("broken"), "no half-built template:\n{list}");

    // Fixed: the step before the failing one comes from the cache.
    write(
        ctx.path(),
        "Dockerfile",
        "FROM debian\nRUN echo first > /first.txt\nRUN echo fixed > /fixed.txt\n",
    );
    let out = build(&server, ctx.path(), "broken", &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 of 2 layer steps from the cache"),
        "{stderr}"
    );
    assert_eq!(
        sh(&server, "broken", "cat /first.txt /fixed.txt"),
        "first\nfixed\n"
    );

    // Unsupported Dockerfiles are refused before anything runs, naming the line.
    write(
        ctx.path(),
        "Dockerfile",
        "FROM debian AS one\nRUN true\nFROM one\nRUN true\n",
    );
    let out = build(&server, ctx.path(), "multi", &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 3") && stderr.contains("multi-stage"),
        "{stderr}"
    );

    // An unknown base.
    write(ctx.path(), "Dockerfile", "FROM nosuchtemplate\nRUN true\n");
    let out = build(&server, ctx.path(), "x", &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no template 'nosuchtemplate'"), "{stderr}");

    // A COPY source that does not exist.
    write(
        ctx.path(),
        "Dockerfile",
        "FROM debian\nCOPY missing.txt /x\n",
    );
    let out = build(&server, ctx.path(), "x", &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("missing.txt") && stderr.contains("line 2"),
        "{stderr}"
    );
}

#[test]
fn start_and_ready_commands_run_in_every_sandbox() {
    let server = TestServer::start();
    import_debian(&server, false);
    let ctx = TestDir::new();
    write(
        ctx.path(),
        "Dockerfile",
        "FROM debian\nENV MARK=from-template\n",
    );
    let out = build(
        &server,
        ctx.path(),
        "svc",
        &[
            "--start-cmd",
            "sleep 0.3; echo \"$MARK\" > /tmp/started; exec sleep 100000",
            "--ready-cmd",
            "test -s /tmp/started",
            "--memory",
            "256",
            "--pids",
            "300",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The template's default limits apply to its sandboxes.
    assert_eq!(
        sh(
            &server,
            "svc",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max"
        ),
        format!("{}\n300\n", 256u64 << 20)
    );
    // Limits above the server's maximum are refused before building.
    let out = build(&server, ctx.path(), "toobig", &["--memory", "99999999"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("memoryMB") && stderr.contains("maximum"),
        "{stderr}"
    );
    // Ready before it is handed out: the file exists at once.
    assert_eq!(sh(&server, "svc", "cat /tmp/started"), "from-template\n");
    let ps = sh(&server, "svc", "ps -eo args");
    assert!(
        ps.contains("sleep 100000"),
        "the start command keeps running:\n{ps}"
    );

    // A ready command that never succeeds fails the build.
    let out = build(
        &server,
        ctx.path(),
        "never",
        &["--ready-cmd", "false", "--ready-timeout", "2"],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("ready command"), "{stderr}");
}

/// A sandbox's log: its start command's output (stdout and stderr, line by
/// line, as the sandbox boots, also in the warm pool) and what happened to
/// it, kept after it is killed; filtered by level and text.
#[test]
fn a_sandbox_log_holds_its_start_commands_output_and_its_life() {
    let server = TestServer::start();
    import_debian(&server, false);
    let ctx = TestDir::new();
    write(
        ctx.path(),
        "Dockerfile",
        "FROM debian\nENV MARK=from-template\n",
    );
    let out = build(
        &server,
        ctx.path(),
        "chatty",
        &[
            "--start-cmd",
            "echo \"hello $MARK\"; echo oops >&2; printf partial; exec sleep 100000",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = server.create_sandbox("chatty", &[]);
    server.cli_ok(&["sandbox", "pause", &id]);
    server.cli_ok(&["sandbox", "resume", &id]);
    // The agent's own log joins it: the processes it starts.
    server.cli_ok(&["exec", &id, "--", "echo", "agent-mark"]);
    let mut agent = String::new();
    for _ in 0..100 {
        agent = server.cli_ok(&[
            "sandbox",
            "logs",
            &id,
            "--search",
            "started process",
            "--json",
        ]);
        if agent.contains("\"agent\"") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let entries: serde_json::Value = serde_json::from_str(&agent).unwrap();
    let from_agent = entries
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["fields"]["source"] == "agent")
        .unwrap_or_else(|| panic!("no agent line about a process: {agent}"));
    assert!(
        from_agent["message"]
            .as_str()
            .is_some_and(|m| m.contains("started process")),
        "{agent}"
    );
    server.cli_ok(&["sandbox", "kill", &id]);
    // The start command's output arrives as it is printed.
    let mut log = String::new();
    for _ in 0..100 {
        log = server.cli_ok(&["sandbox", "logs", &id]);
        if log.contains("hello from-template") && log.contains("start command ended") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let lines: Vec<&str> = log.lines().collect();
    let position = |what: &str| {
        lines
            .iter()
            .position(|l| l.ends_with(what))
            .unwrap_or_else(|| panic!("no line ending with {what:?} in:\n{log}"))
    };
    assert!(
        lines[position("hello from-template")].contains(" info  "),
        "{log}"
    );
    assert!(lines[position("oops")].contains(" error "), "{log}");
    let started = position("sandbox started from template 'chatty' (from the warm pool)");
    let paused = position("sandbox paused (memory)");
    let resumed = position("sandbox resumed");
    let killed = position("sandbox killed");
    assert!(
        started < paused && paused < resumed && resumed < killed,
        "{log}"
    );
    // The unfinished line comes when the command ends (with the sandbox).
    assert!(position("partial") < position_of_end(&lines, &log), "{log}");

    let errors = server.cli_ok(&["sandbox", "logs", &id, "--level", "error"]);
    assert_eq!(errors.lines().count(), 1, "{errors}");
    assert!(errors.trim_end().ends_with("oops"), "{errors}");
    let found = server.cli_ok(&["sandbox", "logs", &id, "--search", "PAUSED", "--json"]);
    let entries: serde_json::Value = serde_json::from_str(&found).unwrap();
    assert_eq!(entries.as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!(entries[0]["level"], "info");
    assert_eq!(entries[0]["fields"]["source"], "hutch");

    let out = server.cli(&["sandbox", "logs", "nosuchsandbox"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );

    // E2B's first version of the route: lines and entries, from `start`.
    let v1: serde_json::Value = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let r = server
            .request(
                reqwest::Method::GET,
                &format!("/sandboxes/{id}/logs?start=0&limit=2"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    });
    assert_eq!(v1["logs"].as_array().map(Vec::len), Some(2), "{v1}");
    assert_eq!(v1["logEntries"].as_array().map(Vec::len), Some(2), "{v1}");
    // Each line is the entry as JSON, as E2B's CLI parses it.
    let line: serde_json::Value =
        serde_json::from_str(v1["logs"][0]["line"].as_str().unwrap()).unwrap();
    assert_eq!(line["message"], v1["logEntries"][0]["message"], "{v1}");
    assert_eq!(line["level"], v1["logEntries"][0]["level"], "{v1}");
}

fn position_of_end(lines: &[&str], log: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains("start command ended"))
        .unwrap_or_else(|| panic!("the start command's end is not in:\n{log}"))
}

/// The issue's definition of done: `FROM` a registry image, `ENV`, `ARG`,
/// `RUN`, `COPY`, `USER`, `WORKDIR`; sandboxes show the expected
/// environment, user and working directory; a second build comes from the
/// cache.
#[test]
fn from_a_registry_image() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    registry.push(&debian_image(), "library/debian:test");
    let server = TestServer::start();
    let ctx = TestDir::new();
    write(
        ctx.path(),
        "Dockerfile",
        &format!(
            "FROM {}\nARG WHO=world\nENV PYTHONPATH=$PYTHONPATH:/extra GREETING=\"hello ${{WHO}}\"\n\
             RUN echo \"$GREETING\" > /greeting.txt\nCOPY app.txt /srv/app.txt\nUSER user\n\
             WORKDIR /home/user/work\nRUN touch made-by-user\n",
            registry.reference("library/debian:test")
        ),
    );
    write(ctx.path(), "app.txt", "payload\n");
    let out = build(
        &server,
        ctx.path(),
        "fromreg",
        &["--build-arg", "WHO=hutch"],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", server.log_tail(40));
    assert!(stderr.contains("pulling 127.0.0.1:"), "{stderr}");

    let view = sh(
        &server,
        "fromreg",
        "echo $PYTHONPATH; echo $GREETING; echo ${WHO-unset}; id -un; pwd; cat /greeting.txt /srv/app.txt; stat -c %U made-by-user",
    );
    assert_eq!(
        view,
        "/app/lib:/extra\nhello hutch\nunset\nuser\n/home/user/work\nhello hutch\npayload\nuser\n"
    );

    let out = build(
        &server,
        ctx.path(),
        "fromreg",
        &["--build-arg", "WHO=hutch"],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("already stored"),
        "layers are not downloaded again:\n{stderr}"
    );
    assert!(
        stderr.contains("5 of 5 layer steps from the cache"),
        "{stderr}"
    );

    // An image the registry does not have.
    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {}\n", registry.reference("library/nope:1")),
    );
    let out = build(&server, ctx.path(), "nope", &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not found"), "{stderr}");
}
