//! What the `hutch` command prints for people and for scripts: shell
//! completions, the manual page, `--json` on creates, and the metrics view.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hutch_test_support::{TestServer, busybox_image, hutch_bin};
use serde_json::Value;

fn hutch(args: &[&str]) -> String {
    let out = Command::new(hutch_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "hutch {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What bash completes `words` (the last one partial) to, with the script
/// `hutch completions bash` prints loaded.
fn bash_completes(words: &[&str]) -> Vec<String> {
    let script = format!(
        "source <('{}' completions bash)\n\
         COMP_WORDS=({})\n\
         COMP_CWORD={}\n\
         COMP_LINE=\"${{COMP_WORDS[*]}}\"\n\
         COMP_POINT=${{#COMP_LINE}}\n\
         _hutch hutch \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        hutch_bin().display(),
        words.join(" "),
        words.len() - 1
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_commands_and_flags() {
    assert_eq!(bash_completes(&["hutch", "sa"]), ["sandbox"]);
    assert_eq!(bash_completes(&["hutch", "sandbox", "me"]), ["metrics"]);
    let flags = bash_completes(&["hutch", "sandbox", "metrics", "--w"]);
    assert_eq!(flags, ["--watch"]);
    for shell in ["zsh", "fish"] {
        let script = hutch(&["completions", shell]);
        assert!(
            script.contains("sandbox") && script.contains("metrics"),
            "{shell}"
        );
    }
}

#[test]
fn the_manual_page_lists_every_command() {
    let page = hutch(&["man"]);
    assert!(page.starts_with(".ie"), "{}", &page[..page.len().min(200)]);
    assert!(page.contains(".TH hutch"), "a man page header");
    for command in [
        "serve",
        "node",
        "template",
        "sandbox",
        "exec",
        "mcp",
        "completions",
    ] {
        assert!(page.contains(command), "{command} is in the manual");
    }
}

#[test]
fn creates_print_json_and_metrics_are_shown_and_watched() {
    let server = TestServer::start_with_args(&["--warm-pool", "0"]);
    let imported: Value = serde_json::from_str(&server.cli_ok(&[
        "template",
        "import",
        busybox_image().to_str().unwrap(),
        "--name",
        "bb",
        "--json",
    ]))
    .unwrap();
    assert_eq!(imported["name"], "bb");

    let created: Value =
        serde_json::from_str(&server.cli_ok(&["sandbox", "create", "bb", "--json"])).unwrap();
    let id = created["sandboxID"].as_str().unwrap().to_owned();
    assert_eq!(created["templateID"], imported["id"]);

    let volume: Value =
        serde_json::from_str(&server.cli_ok(&["volume", "create", "data", "--json"])).unwrap();
    assert_eq!(volume["name"], "data");

    // One sample at once, as a table and as JSON.
    let table = server.cli_ok(&["sandbox", "metrics", &id]);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("TIME"), "{table}");
    assert!(lines.next().unwrap().contains("% of "), "{table}");
    let samples: Value =
        serde_json::from_str(&server.cli_ok(&["sandbox", "metrics", &id, "--json"])).unwrap();
    assert!(samples[0]["memTotal"].as_u64().unwrap() > 0, "{samples}");

    // Watched: new samples as they come, then the end when it is killed.
    let mut watch = server
        .hutch()
        .args(["sandbox", "metrics", &id, "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(watch.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut samples = 0;
    let mut line = String::new();
    while samples < 2 && Instant::now() < deadline {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.contains("% of ") {
            samples += 1;
        }
    }
    assert_eq!(samples, 2, "two samples, one of them new");
    server.cli_ok(&["sandbox", "kill", &id]);
    let status = watch.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("has ended"), "{stderr}");
}
