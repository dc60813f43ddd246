//! The `process.Process` service, driven with real processes through the
//! generated Connect client (HTTP/1.1 + JSON over TCP, h2c + proto over the
//! unix socket).

mod common;

use std::time::Duration;

use buffa::{MessageField, ProtoBox};
use common::*;
use connectrpc::ErrorCode;
use connectrpc::client::CallOptions;
use hutch_protocol::envd::process::{
    CloseStdinRequest, ConnectRequest, ConnectResponse, ListRequest, PTY, ProcessInput,
    ProcessSelector, SendInputRequest, SendSignalRequest, Signal, StartRequest, StreamInputRequest,
    UpdateRequest, process_input, process_selector, pty, stream_input_request,
};

fn by_pid<P: ProtoBox<ProcessSelector>>(pid: u32) -> MessageField<ProcessSelector, P> {
    MessageField::some(ProcessSelector {
        selector: Some(process_selector::Selector::Pid(pid)),
        ..Default::default()
    })
}

fn by_tag<P: ProtoBox<ProcessSelector>>(tag: &str) -> MessageField<ProcessSelector, P> {
    MessageField::some(ProcessSelector {
        selector: Some(process_selector::Selector::Tag(tag.into())),
        ..Default::default()
    })
}

fn stdin_input<P: ProtoBox<ProcessInput>>(data: &[u8]) -> MessageField<ProcessInput, P> {
    MessageField::some(ProcessInput {
        input: Some(process_input::Input::Stdin(data.to_vec())),
        ..Default::default()
    })
}

fn pty_size<P: ProtoBox<PTY>>(cols: u32, rows: u32) -> MessageField<PTY, P> {
    MessageField::some(PTY {
        size: MessageField::some(pty::Size {
            cols,
            rows,
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[tokio::test]
async fn exit_code_is_propagated() {
    let t = TestAgent::start().await;
    let out = run(&t.tcp_client(), start_request(sh("exit 3"))).await;
    let end = out.end();
    assert_eq!(end.exit_code, 3);
    assert!(end.exited);
    assert_eq!(end.status, "exit status 3");
    assert_eq!(end.error.as_deref(), Some("exit status 3"));
    assert!(out.pid > 0);

    let ok = run(&t.tcp_client(), start_request(sh("true"))).await;
    assert_eq!(ok.end().exit_code, 0);
    assert_eq!(ok.end().status, "exit status 0");
    assert_eq!(ok.end().error, None);
}

#[tokio::test]
async fn stdout_and_stderr_are_separate() {
    let t = TestAgent::start().await;
    let out = run(
        &t.tcp_client(),
        start_request(sh("echo to-out; echo to-err >&2; echo more-out")),
    )
    .await;
    assert_eq!(out.stdout_str(), "to-out\nmore-out\n");
    assert_eq!(out.stderr_str(), "to-err\n");
    assert!(out.order.starts_with('s'));
}

#[tokio::test]
async fn large_output_arrives_complete() {
    let t = TestAgent::start().await;
    // ~10 MiB of distinct lines, so loss, duplication or reordering shows.
    let n = 1_400_000;
    let expected: String = (1..=n).map(|i| format!("{i}\n")).collect();
    assert!(expected.len() > 10 * 1024 * 1024 - 1_000_000);
    let started = std::time::Instant::now();
    let out = run(
        &t.tcp_client(),
        start_request(cmd("seq", &["1", &n.to_string()])),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(out.end().exit_code, 0);
    assert_eq!(out.stdout.len(), expected.len());
    assert!(out.stdout == expected.as_bytes(), "output differs");
    // Chunks are at most 32 KiB each.
    let chunks = out.order.matches('o').count();
    assert!(chunks >= expected.len() / (32 * 1024), "{chunks} chunks");
    eprintln!("10 MiB in {elapsed:?} over {chunks} events");

    // The same through the unix socket (h2c, proto codec).
    let out = run(
        &t.unix_client(),
        start_request(cmd("seq", &["1", &n.to_string()])),
    )
    .await;
    assert!(
        out.stdout == expected.as_bytes(),
        "output differs over the unix socket"
    );
}

#[tokio::test]
async fn environment_layers_have_the_right_precedence() {
    let t = TestAgent::start().await;
    assert_eq!(
        t.init(serde_json::json!({
            "envVars": {"OVERRIDE": "sandbox", "SANDBOX_ONLY": "from-sandbox", "PROC_OVER": "sandbox"}
        }))
        .await,
        204
    );
    let client = t.tcp_client();

    let out = run(
        &client,
        start_request(with_envs(
            cmd("env", &[]),
            &[("PROC_OVER", "process"), ("PROCESS_ONLY", "p")],
        )),
    )
    .await;
    let env = out.env();
    assert_eq!(env["TEMPLATE_ONLY"], "from-template");
    assert_eq!(env["OVERRIDE"], "sandbox");
    assert_eq!(env["SANDBOX_ONLY"], "from-sandbox");
    assert_eq!(env["PROC_OVER"], "process");
    assert_eq!(env["PROCESS_ONLY"], "p");
    assert_eq!(env["TRICKY"], "a=b c  d");
    assert_eq!(env["EMPTY_VAR"], "");
    assert_eq!(env["E2B_SANDBOX"], "true");
    assert_eq!(env["E2B_SANDBOX_ID"], "sbx-test");
    assert_eq!(env["E2B_TEMPLATE_ID"], "tpl-test");
    assert_eq!(env["HOSTNAME"], "sbx-test");
    assert_eq!(env["HOME"], "/root");
    assert_eq!(env["USER"], "root");
    assert!(env.contains_key("PATH"));
    // Nothing of the agent's own environment leaks in.
    assert!(!env.contains_key("CARGO_MANIFEST_DIR"));
    // No duplicate names.
    let names: Vec<_> = out
        .stdout_str()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()))
        .collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(names.len(), unique.len(), "duplicate variables: {names:?}");

    // Process env overrides every lower layer.
    let out = run(
        &client,
        start_request(with_envs(sh("echo $OVERRIDE"), &[("OVERRIDE", "process")])),
    )
    .await;
    assert_eq!(out.stdout_str(), "process\n");

    // ...and belongs to that process alone.
    let out = run(&client, start_request(cmd("env", &[]))).await;
    let env = out.env();
    assert_eq!(env["OVERRIDE"], "sandbox");
    assert_eq!(env["PROC_OVER"], "sandbox");
    assert!(!env.contains_key("PROCESS_ONLY"));
}

#[tokio::test]
async fn reserved_and_invalid_variables_are_rejected() {
    let t = TestAgent::start().await;
    let client = t.tcp_client();
    let err = start_err(
        &client,
        start_request(with_envs(
            cmd("true", &[]),
            &[("E2B_SANDBOX_ID", "spoofed")],
        )),
    )
    .await;
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");
    assert!(err.message.unwrap_or_default().contains("E2B_SANDBOX_ID"));

    let err = start_err(
        &client,
        start_request(with_envs(cmd("true", &[]), &[("A=B", "x")])),
    )
    .await;
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn user_from_authorization_header() {
    let t = TestAgent::start().await;
    let client = t.tcp_client();
    // base64("nobody:")
    let options = CallOptions::default().with_header("authorization", "Basic bm9ib2R5Og==");
    let mut stream = client
        .start_with_options(
            start_request(sh("id -u; id -g; echo $USER $HOME; pwd")),
            options,
        )
        .await
        .unwrap();
    let mut out = Collected::default();
    while let Some(msg) = stream.message().await.unwrap() {
        out.add(
            msg.to_owned_message()
                .event
                .into_option()
                .unwrap()
                .event
                .unwrap(),
        );
    }
    let nobody = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
        .expect("a nobody user");
    let home = &nobody[5];
    // A home that does not exist is no working directory: `/` instead.
    let cwd = if std::path::Path::new(home).is_dir() {
        home.as_str()
    } else {
        "/"
    };
    assert_eq!(
        out.stdout_str(),
        format!("{}\n{}\nnobody {home}\n{cwd}\n", nobody[2], nobody[3]),
        "stderr: {}",
        out.stderr_str()
    );

    // base64("no-such-user:")
    let options = CallOptions::default().with_header("authorization", "Basic bm8tc3VjaC11c2VyOg==");
    let mut stream = client
        .start_with_options(start_request(cmd("true", &[])), options)
        .await
        .unwrap();
    let err = stream.message().await.expect_err("unknown user accepted");
    assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");
}

#[tokio::test]
async fn bare_command_is_found_in_the_childs_path() {
    let t = TestAgent::start().await;
    let bin = t.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let tool = bin.join("hutch-test-tool");
    std::fs::write(&tool, "#!/bin/sh\necho tool ran\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&tool).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let client = t.tcp_client();
    let out = run(
        &client,
        start_request(with_envs(cmd("hutch-test-tool", &[]), &[("PATH", &path)])),
    )
    .await;
    assert_eq!(out.stdout_str(), "tool ran\n");

    // Without that PATH it is not found, whatever the agent's own PATH is.
    let err = start_err(&client, start_request(cmd("hutch-test-tool", &[]))).await;
    assert_eq!(err.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn working_directory() {
    let t = TestAgent::start().await;
    let client = t.tcp_client();
    let mut config = cmd("pwd", &[]);
    config.cwd = Some("/tmp".into());
    let out = run(&client, start_request(config)).await;
    assert_eq!(out.stdout_str(), "/tmp\n");

    let mut config = cmd("pwd", &[]);
    config.cwd = Some("/definitely/not/here".into());
    let err = start_err(&client, start_request(config)).await;
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(err.message.unwrap().contains("/definitely/not/here"));

    // The sandbox default from /init.
    let dir = t.dir.path().join("work");
    std::fs::create_dir(&dir).unwrap();
    t.init(serde_json::json!({"defaultWorkdir": dir})).await;
    let out = run(&client, start_request(cmd("pwd", &[]))).await;
    assert_eq!(out.stdout_str().trim_end(), dir.to_str().unwrap());
}

#[tokio::test]
async fn template_workdir_is_created_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let workdir = dir.path().join("app").join("nested");
    let mut boot = boot();
    boot.template_workdir = Some(workdir.to_str().unwrap().into());
    hutch_envd::ensure_workdir(&boot).unwrap();
    assert!(workdir.is_dir());
    let t = TestAgent::with_boot(boot).await;
    let out = run(&t.tcp_client(), start_request(cmd("pwd", &[]))).await;
    assert_eq!(out.stdout_str().trim_end(), workdir.to_str().unwrap());
}

#[tokio::test]
async fn client_disconnect_keeps_the_process_running() {
    let t = TestAgent::start().await;
    let marker = t.dir.path().join("finished");
    // Two MiB of output nobody reads, then a file: only written if the
    // process survives the disconnect and its output keeps being drained.
    let script = format!(
        "head -c 2097152 /dev/zero; sleep 0.3; echo done > {}",
        marker.display()
    );
    let client = t.tcp_client();
    let mut stream = client.start(start_request(sh(&script))).await.unwrap();
    let first = stream.message().await.unwrap().unwrap().to_owned_message();
    assert!(matches!(
        first.event.into_option().unwrap().event,
        Some(hutch_protocol::envd::process::process_event::Event::Start(
            _
        ))
    ));
    drop(stream);
    drop(client);
    assert!(
        wait_until(Duration::from_secs(10), || marker.exists()).await,
        "the process did not finish after its client went away"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "done\n");
}

#[tokio::test]
async fn connect_by_tag_receives_later_output() {
    let t = TestAgent::start().await;
    let go = t.dir.path().join("go");
    let script = format!(
        "echo early; while [ ! -f {go} ]; do sleep 0.02; done; echo later; exit 7",
        go = go.display()
    );
    let client = t.tcp_client();
    let mut request = start_request(sh(&script));
    request.tag = Some("watch-me".into());
    let mut started = client.start(request).await.unwrap();
    let first = started.message().await.unwrap().unwrap().to_owned_message();
    let Some(hutch_protocol::envd::process::process_event::Event::Start(s)) =
        first.event.into_option().unwrap().event
    else {
        panic!("first event is not start");
    };
    let mut out = Collected {
        order: "s".into(),
        ..Default::default()
    };
    while out.stdout.is_empty() {
        let m = started.message().await.unwrap().expect("ended early");
        out.add(
            m.to_owned_message()
                .event
                .into_option()
                .unwrap()
                .event
                .unwrap(),
        );
    }
    assert_eq!(out.stdout_str(), "early\n");

    // Two watchers by tag, one by pid, over both transports.
    let mut watchers = Vec::new();
    for selector in [by_tag("watch-me"), by_pid(s.pid)] {
        let stream = client
            .connect(ConnectRequest {
                process: selector,
                ..Default::default()
            })
            .await
            .unwrap();
        watchers.push(stream);
    }
    let unix = t.unix_client();
    let mut unix_watch = unix
        .connect(ConnectRequest {
            process: by_tag("watch-me"),
            ..Default::default()
        })
        .await
        .unwrap();
    // The start event tells each watcher it is attached.
    for w in &mut watchers {
        let m: ConnectResponse = w.message().await.unwrap().unwrap().to_owned_message();
        assert!(matches!(
            m.event.into_option().unwrap().event,
            Some(hutch_protocol::envd::process::process_event::Event::Start(ref e)) if e.pid == s.pid
        ));
    }
    let m: ConnectResponse = unix_watch
        .message()
        .await
        .unwrap()
        .unwrap()
        .to_owned_message();
    let mut unix_out = Collected::default();
    unix_out.add(m.event.into_option().unwrap().event.unwrap());

    std::fs::write(&go, "").unwrap();

    for mut w in watchers {
        let mut out = Collected {
            order: "s".into(),
            ..Default::default()
        };
        while let Some(m) = w.message().await.unwrap() {
            let m: ConnectResponse = m.to_owned_message();
            out.add(m.event.into_option().unwrap().event.unwrap());
        }
        assert_eq!(out.stdout_str(), "later\n");
        assert_eq!(out.end().exit_code, 7);
    }
    while let Some(m) = unix_watch.message().await.unwrap() {
        unix_out.add(
            m.to_owned_message()
                .event
                .into_option()
                .unwrap()
                .event
                .unwrap(),
        );
    }
    assert_eq!(unix_out.pid, s.pid);
    assert_eq!(unix_out.stdout_str(), "later\n");
    assert_eq!(unix_out.end().exit_code, 7);

    // The original stream saw everything.
    while let Some(m) = started.message().await.unwrap() {
        out.add(
            m.to_owned_message()
                .event
                .into_option()
                .unwrap()
                .event
                .unwrap(),
        );
    }
    assert_eq!(out.stdout_str(), "early\nlater\n");

    // Re-attaching after the end gives start + end.
    let mut late = client
        .connect(ConnectRequest {
            process: by_tag("watch-me"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Collected::default();
    while let Some(m) = late.message().await.unwrap() {
        out.add(
            m.to_owned_message()
                .event
                .into_option()
                .unwrap()
                .event
                .unwrap(),
        );
    }
    assert_eq!(out.order, "sx");
    assert_eq!(out.pid, s.pid);
    assert_eq!(out.end().exit_code, 7);
}

#[tokio::test]
async fn send_input_and_close_stdin() {
    let t = TestAgent::start().await;
    let client = t.unix_client();
    let mut request = start_request(cmd("cat", &[]));
    request.stdin = None; // absent: stdin stays open
    let mut stream = client.start(request).await.unwrap();
    let first = stream.message().await.unwrap().unwrap().to_owned_message();
    let Some(hutch_protocol::envd::process::process_event::Event::Start(s)) =
        first.event.into_option().unwrap().event
    else {
        panic!("first event is not start");
    };
    for chunk in [&b"hello\n"[..], b"world"] {
        client
            .send_input(SendInputRequest {
                process: by_pid(s.pid),
                input: stdin_input(chunk),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    client
        .close_stdin(CloseStdinRequest {
            process: by_pid(s.pid),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Collected {
        order: "s".into(),
        ..Default::default()
    };
    while let Some(m) = stream.message().await.unwrap() {
        out.add(
            m.to_owned_message()
                .event
                .into_option()
                .unwrap()
                .event
                .unwrap(),
        );
    }
    assert_eq!(out.stdout_str(), "hello\nworld");
    assert_eq!(out.end().exit_code, 0);
}

#[tokio::test]
async fn stdin_false_is_dev_null() {
    let t = TestAgent::start().await;
    let client = t.tcp_client();
    // With stdin disabled `cat` sees end-of-file at once.
    let out = run(&client, start_request(cmd("cat", &[]))).await;
    assert_eq!(out.end().exit_code, 0);
    assert!(out.stdout.is_empty());

    let mut request = start_request(cmd("sleep", &["5"]));
    request.tag = Some("no-stdin".into());
    let mut stream = client.start(request).await.unwrap();
    stream.message().await.unwrap();
    let err = client
        .send_input(SendInputRequest {
            process: by_tag("no-stdin"),
            input: stdin_input(b"x"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::FailedPrecondition);
    client
        .send_signal(SendSignalRequest {
            process: by_tag("no-stdin"),
            signal: Signal::SIGNAL_SIGKILL.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn stream_input_feeds_stdin() {
    let t = TestAgent::start().await;
    let client = t.unix_client();
    let mut request = start_request(cmd("cat", &[]));
    request.stdin = Some(true);
    request.tag = Some("streamed".into());
    let mut stream = client.start(request).await.unwrap();
    stream.message().await.unwrap();
    let messages = vec![
        StreamInputRequest {
            event: Some(stream_input_request::Event::Start(Box::new(
                stream_input_request::StartEvent {
                    process: by_tag("streamed"),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        },
        StreamInputRequest {
            event: Some(stream_input_request::Event::Data(Box::new(
                stream_input_request::DataEvent {
                    input: stdin_input(b"streamed input"),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        },
    ];
    client
        .stream_input(connectrpc::client::stream_iter(messages))
        .await
        .unwrap();
    client
        .close_stdin(CloseStdinRequest {
            process: by_tag("streamed"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Collected {
        order: "s".into(),
        ..Default::default()
    };
    while let Some(m) = stream.message().await.unwrap() {
        out.add(
            m.to_owned_message()
                .event
                .into_option()
                .unwrap()
                .event
                .unwrap(),
        );
    }
    assert_eq!(out.stdout_str(), "streamed input");
}

#[tokio::test]
async fn sigkill_ends_the_whole_process_group() {
    let t = TestAgent::start().await;
    let client = t.tcp_client();
    let child_pid_file = t.dir.path().join("child.pid");
    // The shell's background child must die too (same process group).
    let script = format!("sleep 30 & echo $! > {}; wait", child_pid_file.display());
    let mut stream = client.start(start_request(sh(&script))).await.unwrap();
    let first = stream.message().await.unwrap().unwrap().to_owned_message();
    let Some(hutch_protocol::envd::process::process_event::Event::Start(s)) =
        first.event.into_option().unwrap().event
    else {
        panic!("first event is not start");
    };
    assert!(wait_until(Duration::from_secs(5), || child_pid_file.exists()).await);
    client
        .send_signal(SendSignalRequest {
            process: by_pid(s.pid),
            signal: Signal::SIGNAL_SIGKILL.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Collected {
        order: "s".into(),
        ..Default::default()
    };
    while let Some(m) = stream.message().await.unwrap() {
        out.add(
            m.to_owned_message()
                .event
                .into_option()
                .unwrap()
                .event
                .unwrap(),
        );
    }
    let end = out.end();
    assert_eq!(end.status, "signal: killed");
    assert_eq!(end.exit_code, -1);
    assert!(!end.exited);
    let child: i32 = std::fs::read_to_string(&child_pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signal 0 only checks for existence.
    let alive = || unsafe { libc::kill(child, 0) } == 0;
    assert!(
        wait_until(Duration::from_secs(5), || !alive()).await,
        "background child survived"
    );
}

#[tokio::test]
async fn sigterm_signal() {
    let t = TestAgent::start().await;
    let client = t.tcp_client();
    let mut request = start_request(cmd("sleep", &["30"]));
    request.tag = Some("term-me".into());
    let mut stream = client.start(request).await.unwrap();
    stream.message().await.unwrap();
    client
        .send_signal(SendSignalRequest {
            process: by_tag("term-me"),
            signal: Signal::SIGNAL_SIGTERM.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Collected {
        order: "s".into(),
        ..Default::default()
    };
    while let Some(m) = stream.message().await.unwrap() {
        out.add(
            m.to_owned_message()
                .event
                .into_option()
                .unwrap()
                .event
                .unwrap(),
        );
    }
    assert_eq!(out.end().status, "signal: terminated");
}

#[tokio::test]
async fn list_shows_running_processes() {
    let t = TestAgent::start().await;
    let client = t.tcp_client();
    let mut request = start_request(with_envs(cmd("sleep", &["30"]), &[("K", "v")]));
    request.tag = Some("lister".into());
    let mut stream = client.start(request).await.unwrap();
    let first = stream.message().await.unwrap().unwrap().to_owned_message();
    let Some(hutch_protocol::envd::process::process_event::Event::Start(s)) =
        first.event.into_option().unwrap().event
    else {
        panic!("first event is not start");
    };
    let list = client
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_owned();
    let info = list
        .processes
        .iter()
        .find(|p| p.pid == s.pid)
        .expect("process not listed");
    assert_eq!(info.tag.as_deref(), Some("lister"));
    let config = info.config.as_option().unwrap();
    assert_eq!(config.cmd, "sleep");
    assert_eq!(config.args, vec!["30".to_string()]);
    assert_eq!(config.envs.get("K").map(String::as_str), Some("v"));

    client
        .send_signal(SendSignalRequest {
            process: by_pid(s.pid),
            signal: Signal::SIGNAL_SIGKILL.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    while stream.message().await.unwrap().is_some() {}
    let list = client
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_owned();
    assert!(
        list.processes.iter().all(|p| p.pid != s.pid),
        "ended process still listed"
    );
}

#[tokio::test]
async fn unknown_processes_are_not_found() {
    let t = TestAgent::start().await;
    let client = t.tcp_client();
    let err = client
        .send_signal(SendSignalRequest {
            process: by_pid(999_999_999),
            signal: Signal::SIGNAL_SIGKILL.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    let err = client
        .send_input(SendInputRequest {
            process: by_tag("nope"),
            input: stdin_input(b"x"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    let err = client
        .close_stdin(CloseStdinRequest {
            process: by_pid(999_999_999),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    let mut stream = client
        .connect(ConnectRequest {
            process: by_tag("nope"),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = stream.message().await.expect_err("connect to unknown tag");
    assert_eq!(err.code, ErrorCode::NotFound);
    let err = start_err(&client, start_request(cmd("/no/such/binary", &[]))).await;
    assert_eq!(err.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn keepalive_events_when_asked_for() {
    let t = TestAgent::start().await;
    let client = t.tcp_client();
    let options = CallOptions::default().with_header("keepalive-ping-interval", "1");
    let mut stream = client
        .start_with_options(start_request(sh("sleep 2.5; echo done")), options)
        .await
        .unwrap();
    let mut out = Collected::default();
    while let Some(m) = stream.message().await.unwrap() {
        out.add(
            m.to_owned_message()
                .event
                .into_option()
                .unwrap()
                .event
                .unwrap(),
        );
    }
    assert!(out.keepalives >= 2, "{out:?}");
    assert_eq!(out.stdout_str(), "done\n");
    assert!(out.order.starts_with("sk"), "{}", out.order);
}

#[tokio::test]
async fn deadline_kills_the_process() {
    let t = TestAgent::start().await;
    let client = t.tcp_client();
    let options = CallOptions::default().with_timeout(Duration::from_millis(1500));
    let mut request = start_request(cmd("sleep", &["30"]));
    request.tag = Some("deadline".into());
    let mut stream = client.start_with_options(request, options).await.unwrap();
    // The stream ends at the deadline; the process with it.
    let mut events = 0;
    while let Ok(Some(_)) = stream.message().await {
        events += 1;
    }
    assert!(events >= 1, "no start event before the deadline");
    // The process is gone within a moment of the deadline.
    let mut gone = false;
    for _ in 0..100 {
        let list = client
            .list(ListRequest::default())
            .await
            .unwrap()
            .into_owned();
        if list
            .processes
            .iter()
            .all(|p| p.tag.as_deref() != Some("deadline"))
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "process outlived its deadline");
}

#[tokio::test]
async fn pty_processes() {
    let t = TestAgent::start().await;
    let client = t.unix_client();
    let mut request = start_request(sh(
        "tty; echo TERM=$TERM; stty size; read line; echo got:$line; stty size",
    ));
    request.pty = pty_size(80, 24);
    request.stdin = None;
    let mut stream = client.start(request).await.unwrap();
    let first = stream.message().await.unwrap().unwrap().to_owned_message();
    let Some(hutch_protocol::envd::process::process_event::Event::Start(s)) =
        first.event.into_option().unwrap().event
    else {
        panic!("first event is not start");
    };
    let mut out = Collected {
        order: "s".into(),
        ..Default::default()
    };
    // Wait for the first `stty size` before resizing.
    while !String::from_utf8_lossy(&out.pty).contains("24 80") {
        let m = stream.message().await.unwrap().expect("ended early");
        out.add(
            m.to_owned_message()
                .event
                .into_option()
                .unwrap()
                .event
                .unwrap(),
        );
    }
    client
        .update(UpdateRequest {
            process: by_pid(s.pid),
            pty: pty_size(120, 40),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .send_input(SendInputRequest {
            process: by_pid(s.pid),
            input: MessageField::some(ProcessInput {
                input: Some(process_input::Input::Pty(b"typed\n".to_vec())),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    while let Some(m) = stream.message().await.unwrap() {
        out.add(
            m.to_owned_message()
                .event
                .into_option()
                .unwrap()
                .event
                .unwrap(),
        );
    }
    let text = String::from_utf8_lossy(&out.pty);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("TERM=xterm-256color"), "{text}");
    assert!(text.contains("got:typed"), "{text}");
    assert!(text.contains("40 120"), "{text}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    assert_eq!(out.end().exit_code, 0);
}

#[tokio::test]
async fn many_concurrent_processes() {
    let t = TestAgent::start().await;
    let client = t.tcp_client();
    let runs = (0..20).map(|i| {
        let client = client.clone();
        async move {
            let out = run(
                &client,
                start_request(sh(&format!("echo {i}; exit {}", i % 5))),
            )
            .await;
            assert_eq!(out.stdout_str(), format!("{i}\n"));
            assert_eq!(out.end().exit_code, i % 5);
        }
    });
    futures::future::join_all(runs).await;
}

#[tokio::test]
async fn start_request_without_cmd_is_invalid() {
    let t = TestAgent::start().await;
    let err = start_err(&t.tcp_client(), StartRequest::default()).await;
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}
