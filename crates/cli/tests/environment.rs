//! The cases of `docs/environment.md`, end to end: a real server, real runc
//! sandboxes from real images, driven with the `hutch` CLI as a user would.
//! Every assertion is made from inside the sandbox.

use hutch_test_support::{TestServer, busybox_image, debian_image};

fn import(server: &TestServer, image: &std::path::Path, name: &str) {
    server.cli_ok(&[
        "template",
        "import",
        image.to_str().unwrap(),
        "--name",
        name,
    ]);
}

fn create(server: &TestServer, template: &str, env: &[&str]) -> String {
    let mut args = vec!["sandbox", "create", template];
    for e in env {
        args.push("--env");
        args.push(e);
    }
    let id = server.cli_ok(&args);
    let id = id.trim().to_owned();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "bad id {id:?}"
    );
    id
}

/// `hutch exec ID [opts] -- CMD...`, returning stdout.
fn exec(server: &TestServer, id: &str, opts: &[&str], cmd: &[&str]) -> String {
    let mut args = vec!["exec", id];
    args.extend_from_slice(opts);
    args.push("--");
    args.extend_from_slice(cmd);
    server.cli_ok(&args)
}

/// Every case of the table that needs no template build step, on a
/// Debian-based image (bash, sudo, a login shell whose /etc/profile resets
/// PATH).
fn check_cases(server: &TestServer, id: &str) {
    let sh = |script: &str| exec(server, id, &[], &["sh", "-c", script]);
    assert_eq!(sh("echo $MY_APP_CONFIG"), "/etc/myapp/config.json\n");
    assert_eq!(
        exec(
            server,
            id,
            &[],
            &["bash", "-l", "-c", "echo $MY_APP_CONFIG"]
        ),
        "/etc/myapp/config.json\n"
    );
    assert_eq!(
        exec(server, id, &[], &["bash", "-l", "-c", "command -v mytool"]),
        "/opt/tool/bin/mytool\n",
        "the image's PATH must survive /etc/profile in a login shell"
    );
    assert_eq!(exec(server, id, &[], &["printenv", "TRICKY"]), "a=b c  d\n");
    assert_eq!(sh("echo ${EMPTY_VAR+set}"), "set\n");
    assert_eq!(exec(server, id, &[], &["pwd"]), "/app\n");
    assert_eq!(exec(server, id, &[], &["id", "-u"]), "0\n");
    assert_eq!(
        exec(
            server,
            id,
            &["--user", "user"],
            &["sh", "-c", "echo $HOME $USER; id -u"]
        ),
        "/home/user user\n1000\n"
    );
    assert_eq!(sh("echo $OVERRIDE"), "sandbox\n");
    assert_eq!(
        exec(
            server,
            id,
            &["--env", "OVERRIDE=process"],
            &["sh", "-c", "echo $OVERRIDE"]
        ),
        "process\n"
    );
    assert_eq!(
        sh("echo $OVERRIDE"),
        "sandbox\n",
        "process env must not leak"
    );
    assert_eq!(
        exec(
            server,
            id,
            &["--env", "PATH=/custom:/usr/bin:/bin"],
            &["bash", "-l", "-c", "echo $PATH"]
        ),
        "/custom:/usr/bin:/bin\n"
    );
    assert_eq!(
        sh("env | cut -d= -f1 | sort | uniq -d"),
        "",
        "duplicate names"
    );
    // A process variable never reaches a later process, sudo included.
    assert_eq!(
        exec(
            server,
            id,
            &["--env", "LEAK=1"],
            &["sh", "-c", "echo $LEAK"]
        ),
        "1\n"
    );
    assert_eq!(sh("echo ${LEAK-unset}"), "unset\n");
    assert_eq!(
        exec(
            server,
            id,
            &[],
            &["sudo", "-u", "user", "sh", "-c", "echo ${LEAK-unset}"]
        ),
        "unset\n"
    );
    assert_eq!(
        exec(
            server,
            id,
            &[],
            &["sudo", "-E", "sh", "-c", "echo ${LEAK-unset}"]
        ),
        "unset\n"
    );
}

#[test]
fn debian_image_every_precedence_level_and_after_restart() {
    let server = TestServer::start();
    import(&server, &debian_image(), "deb");
    let id = create(&server, "deb", &["OVERRIDE=sandbox"]);
    check_cases(&server, &id);

    // The sandbox's identity is there, and cannot be spoofed.
    assert_eq!(
        exec(&server, &id, &[], &["printenv", "E2B_SANDBOX_ID"]),
        format!("{id}\n")
    );
    let spoof = server.cli(&["exec", &id, "--env", "E2B_SANDBOX_ID=x", "--", "true"]);
    assert!(!spoof.status.success());
    assert!(
        String::from_utf8_lossy(&spoof.stderr).contains("E2B_SANDBOX_ID"),
        "the error names the variable: {}",
        String::from_utf8_lossy(&spoof.stderr)
    );

    // The sandbox's hostname is its id and resolves (sudo needs that).
    assert_eq!(
        exec(
            &server,
            &id,
            &[],
            &[
                "sh",
                "-c",
                "cat /etc/hostname; getent hosts $(hostname) >/dev/null && echo resolves"
            ]
        ),
        format!("{id}\nresolves\n")
    );

    // Imported without --allow-privilege-escalation: no_new_privs holds, so
    // a setuid sudo cannot raise an unprivileged user's privileges.
    let sudo = server.cli(&["exec", &id, "--user", "user", "--", "sudo", "-n", "true"]);
    assert!(!sudo.status.success(), "sudo must fail under no_new_privs");
    assert_eq!(
        exec(
            &server,
            &id,
            &[],
            &["sh", "-c", "grep NoNewPrivs /proc/self/status"]
        ),
        "NoNewPrivs:\t1\n"
    );

    // After a server restart the sandbox is re-adopted and nothing changed.
    let dir = server.stop();
    let server = TestServer::restart(dir);
    check_cases(&server, &id);
    server.cli_ok(&["sandbox", "kill", &id]);
}

#[test]
fn busybox_image_without_bash_or_profile() {
    let server = TestServer::start();
    import(&server, &busybox_image(), "bb");
    let id = create(&server, "bb", &[]);
    let sh = |script: &str| exec(&server, &id, &[], &["sh", "-c", script]);
    assert_eq!(sh("echo $MY_APP_CONFIG"), "/etc/myapp/config.json\n");
    assert_eq!(sh("echo ${EMPTY_VAR+set}"), "set\n");
    assert_eq!(sh("echo \"$TRICKY\""), "a=b c  d\n");
    assert_eq!(sh("pwd"), "/app\n");
    assert_eq!(sh("mytool"), "mytool\n");
    assert_eq!(
        exec(&server, &id, &[], &["sh", "-l", "-c", "echo $PATH"]),
        "/opt/tool/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    assert_eq!(sh("echo $OVERRIDE"), "image\n");
    assert_eq!(
        exec(
            &server,
            &id,
            &["--user", "1000"],
            &["sh", "-c", "id -u; echo $HOME"]
        ),
        "1000\n/home/user\n"
    );
    assert_eq!(exec(&server, &id, &["--cwd", "/tmp"], &["pwd"]), "/tmp\n");
    assert_eq!(sh("env | cut -d= -f1 | sort | uniq -d"), "");
    server.cli_ok(&["sandbox", "kill", &id]);
}

#[test]
fn every_import_format_gives_the_same_environment() {
    let server = TestServer::start();
    let layout = busybox_image();
    for (name, source) in [
        ("layout", layout.clone()),
        ("ociarchive", hutch_test_support::as_oci_archive(&layout)),
        (
            "dockerarchive",
            hutch_test_support::as_docker_archive(&layout),
        ),
    ] {
        import(&server, &source, name);
        let out = server.cli(&[
            "run",
            name,
            "--env",
            "OVERRIDE=sandbox",
            "--",
            "sh",
            "-c",
            "echo $MY_APP_CONFIG $OVERRIDE; pwd",
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "/etc/myapp/config.json sandbox\n/app\n",
            "{name}"
        );
    }
}
