use proptest::prelude::*;

use super::*;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
user:x:1000:1000::/home/user:/bin/bash\n\
# a comment\n\
broken line\n";
const GROUP: &str = "root:x:0:\nsudo:x:27:user\nuser:x:1000:\ndocker:x:999:user,other\n";

fn accounts() -> Accounts {
    Accounts::parse(PASSWD, GROUP)
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The image of the cases in `docs/environment.md`.
fn case_image() -> Vec<(String, String)> {
    image_layer(&[
        "PATH=/opt/tool/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "MY_APP_CONFIG=/etc/myapp/config.json".into(),
        "PYTHONPATH=/app/lib".into(),
        "EMPTY_VAR=".into(),
        "TRICKY=a=b c  d".into(),
        "OVERRIDE=image".into(),
    ])
}

const ID: Identity<'static> = Identity {
    sandbox_id: "sbx1",
    template_id: "tpl1",
    hostname: "sbx1",
};

fn run(
    template: TemplateLayer<'_>,
    sandbox: SandboxLayer<'_>,
    process: ProcessLayer<'_>,
) -> Result<Resolved, EnvError> {
    resolve(&template, &sandbox, &process, &ID, &accounts())
}

fn assert_no_duplicates(env: &[(String, String)]) {
    let mut names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "duplicate names in {env:?}");
}

#[test]
fn image_env_reaches_the_process() {
    let image = case_image();
    let t = TemplateLayer {
        env: &image,
        workdir: Some("/app"),
        user: None,
    };
    let r = run(t, SandboxLayer::default(), ProcessLayer::default()).unwrap();
    assert_eq!(r.var("MY_APP_CONFIG"), Some("/etc/myapp/config.json"));
    assert_eq!(r.var("TRICKY"), Some("a=b c  d"));
    assert_eq!(r.var("EMPTY_VAR"), Some(""), "an empty value is a value");
    assert_eq!(
        r.var("PATH"),
        Some("/opt/tool/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    );
    assert_eq!(r.cwd, "/app");
    assert_eq!((r.uid, r.gid), (0, 0));
    assert_eq!(r.var("HOME"), Some("/root"));
    assert_eq!(r.var("USER"), Some("root"));
    assert_no_duplicates(&r.env);
}

#[test]
fn default_path_only_when_no_layer_sets_one() {
    let r = run(
        TemplateLayer::default(),
        SandboxLayer::default(),
        ProcessLayer::default(),
    )
    .unwrap();
    assert_eq!(r.var("PATH"), Some(DEFAULT_PATH));
    let custom = pairs(&[("PATH", "/custom:/usr/bin:/bin")]);
    let p = ProcessLayer {
        env: &custom,
        ..Default::default()
    };
    let r = run(TemplateLayer::default(), SandboxLayer::default(), p).unwrap();
    assert_eq!(r.var("PATH"), Some("/custom:/usr/bin:/bin"));
}

#[test]
fn higher_layers_replace_lower_ones_by_name() {
    let image = case_image();
    let sandbox = pairs(&[("OVERRIDE", "sandbox"), ("S_ONLY", "s")]);
    let process = pairs(&[("OVERRIDE", "process")]);
    let t = TemplateLayer {
        env: &image,
        ..Default::default()
    };
    let s = SandboxLayer {
        env: &sandbox,
        workdir: None,
    };
    let r = run(t, s, ProcessLayer::default()).unwrap();
    assert_eq!(r.var("OVERRIDE"), Some("sandbox"));
    let p = ProcessLayer {
        env: &process,
        ..Default::default()
    };
    let r = run(t, s, p).unwrap();
    assert_eq!(r.var("OVERRIDE"), Some("process"));
    assert_eq!(r.var("S_ONLY"), Some("s"));
    assert_no_duplicates(&r.env);
    // The process layer is an input, not state: the next process is back
    // to the sandbox's value.
    let r = run(t, s, ProcessLayer::default()).unwrap();
    assert_eq!(r.var("OVERRIDE"), Some("sandbox"));
}

#[test]
fn home_user_logname_follow_the_process_user() {
    let p = ProcessLayer {
        user: Some("user"),
        ..Default::default()
    };
    let r = run(TemplateLayer::default(), SandboxLayer::default(), p).unwrap();
    assert_eq!((r.uid, r.gid), (1000, 1000));
    assert_eq!(r.var("HOME"), Some("/home/user"));
    assert_eq!(r.var("USER"), Some("user"));
    assert_eq!(r.var("LOGNAME"), Some("user"));
    assert_eq!(
        r.cwd, "/home/user",
        "home is the last working-directory default"
    );
    assert_eq!(r.groups, vec![1000, 27, 999]);
}

#[test]
fn home_from_a_higher_layer_wins_over_passwd() {
    let image = pairs(&[("HOME", "/srv")]);
    let t = TemplateLayer {
        env: &image,
        ..Default::default()
    };
    let p = ProcessLayer {
        user: Some("user"),
        ..Default::default()
    };
    let r = run(t, SandboxLayer::default(), p).unwrap();
    assert_eq!(r.var("HOME"), Some("/srv"));
    assert_eq!(r.home, "/home/user");
}

#[test]
fn user_precedence_process_then_template_then_root() {
    let t = TemplateLayer {
        user: Some("user"),
        ..Default::default()
    };
    let r = run(t, SandboxLayer::default(), ProcessLayer::default()).unwrap();
    assert_eq!(r.uid, 1000);
    let p = ProcessLayer {
        user: Some("root"),
        ..Default::default()
    };
    let r = run(t, SandboxLayer::default(), p).unwrap();
    assert_eq!(r.uid, 0);
    // An empty user string is "not set", as in an image config.
    let t = TemplateLayer {
        user: Some(""),
        ..Default::default()
    };
    let r = run(t, SandboxLayer::default(), ProcessLayer::default()).unwrap();
    assert_eq!(r.uid, 0);
}

#[test]
fn user_forms() {
    let a = accounts();
    let u = a.resolve_user("1000").unwrap();
    assert_eq!(
        (u.uid, u.gid, u.name.as_deref()),
        (1000, 1000, Some("user"))
    );
    let u = a.resolve_user("1000:27").unwrap();
    assert_eq!((u.uid, u.gid), (1000, 27));
    let u = a.resolve_user("user:sudo").unwrap();
    assert_eq!((u.uid, u.gid), (1000, 27));
    let u = a.resolve_user("4242").unwrap();
    assert_eq!(
        (u.uid, u.gid, u.name, u.home.as_str()),
        (4242, 0, None, "/")
    );
    let u = a.resolve_user("4242:4343").unwrap();
    assert_eq!((u.uid, u.gid), (4242, 4343));
    assert_eq!(
        a.resolve_user("nobody-here"),
        Err(EnvError::UnknownUser {
            user: "nobody-here".into()
        })
    );
    assert_eq!(
        a.resolve_user("user:nogroup"),
        Err(EnvError::UnknownGroup {
            group: "nogroup".into()
        })
    );
    assert!(matches!(
        a.resolve_user(":1"),
        Err(EnvError::InvalidUser { .. })
    ));
    assert!(matches!(
        a.resolve_user("1:"),
        Err(EnvError::InvalidUser { .. })
    ));
}

#[test]
fn root_by_name_without_passwd_is_uid_0() {
    let u = Accounts::default().resolve_user("root").unwrap();
    assert_eq!(
        (u.uid, u.gid, u.name.as_deref(), u.home.as_str()),
        (0, 0, Some("root"), "/root")
    );
    let u = Accounts::default().resolve_user("root:5").unwrap();
    assert_eq!((u.uid, u.gid), (0, 5));
    assert!(Accounts::default().resolve_user("user").is_err());
}

#[test]
fn root_without_passwd_gets_root_home() {
    let r = resolve(
        &TemplateLayer::default(),
        &SandboxLayer::default(),
        &ProcessLayer::default(),
        &ID,
        &Accounts::default(),
    )
    .unwrap();
    assert_eq!(r.var("HOME"), Some("/root"));
    assert_eq!(r.var("USER"), None);
    assert_eq!(r.cwd, "/root");
}

#[test]
fn working_directory_precedence() {
    let t = TemplateLayer {
        workdir: Some("/app"),
        ..Default::default()
    };
    let s = SandboxLayer {
        env: &[],
        workdir: Some("/work"),
    };
    assert_eq!(
        run(t, SandboxLayer::default(), ProcessLayer::default())
            .unwrap()
            .cwd,
        "/app"
    );
    assert_eq!(run(t, s, ProcessLayer::default()).unwrap().cwd, "/work");
    let p = ProcessLayer {
        cwd: Some("/tmp"),
        ..Default::default()
    };
    assert_eq!(run(t, s, p).unwrap().cwd, "/tmp");
    let p = ProcessLayer {
        cwd: Some("sub/dir"),
        ..Default::default()
    };
    assert_eq!(run(t, s, p).unwrap().cwd, "/work/sub/dir");
}

#[test]
fn term_only_for_pty_and_overridable() {
    let r = run(
        TemplateLayer::default(),
        SandboxLayer::default(),
        ProcessLayer::default(),
    )
    .unwrap();
    assert_eq!(r.var("TERM"), None);
    let p = ProcessLayer {
        pty: true,
        ..Default::default()
    };
    let r = run(TemplateLayer::default(), SandboxLayer::default(), p).unwrap();
    assert_eq!(r.var("TERM"), Some(PTY_TERM));
    let dumb = pairs(&[("TERM", "dumb")]);
    let p = ProcessLayer {
        pty: true,
        env: &dumb,
        ..Default::default()
    };
    let r = run(TemplateLayer::default(), SandboxLayer::default(), p).unwrap();
    assert_eq!(r.var("TERM"), Some("dumb"));
}

#[test]
fn identity_is_set_and_cannot_be_overridden() {
    let image = pairs(&[("E2B_SANDBOX_ID", "spoofed")]);
    let t = TemplateLayer {
        env: &image,
        ..Default::default()
    };
    let r = run(t, SandboxLayer::default(), ProcessLayer::default()).unwrap();
    assert_eq!(r.var("E2B_SANDBOX_ID"), Some("sbx1"));
    assert_eq!(r.var("HUTCH_TEMPLATE_ID"), Some("tpl1"));
    assert_eq!(r.var("E2B_SANDBOX"), Some("true"));
    assert_eq!(r.var("HOSTNAME"), Some("sbx1"));
    let bad = pairs(&[("HUTCH_SANDBOX_ID", "x")]);
    let s = SandboxLayer {
        env: &bad,
        workdir: None,
    };
    assert!(matches!(
        run(TemplateLayer::default(), s, ProcessLayer::default()),
        Err(EnvError::Reserved {
            layer: Layer::Sandbox,
            ..
        })
    ));
    let p = ProcessLayer {
        env: &bad,
        ..Default::default()
    };
    assert!(matches!(
        run(TemplateLayer::default(), SandboxLayer::default(), p),
        Err(EnvError::Reserved {
            layer: Layer::Process,
            ..
        })
    ));
    // HOSTNAME is an ordinary layer-0 default.
    let host = pairs(&[("HOSTNAME", "mine")]);
    let p = ProcessLayer {
        env: &host,
        ..Default::default()
    };
    let r = run(TemplateLayer::default(), SandboxLayer::default(), p).unwrap();
    assert_eq!(r.var("HOSTNAME"), Some("mine"));
}

#[test]
fn invalid_names_and_values_are_rejected() {
    for bad in [("", "x"), ("A=B", "x"), ("A\0", "x")] {
        let env = pairs(&[bad]);
        assert!(matches!(
            validate_sandbox_env(&env),
            Err(EnvError::InvalidName { .. })
        ));
    }
    let env = pairs(&[("A", "x\0y")]);
    assert!(matches!(
        validate_process_env(&env),
        Err(EnvError::InvalidValue { .. })
    ));
    // Anything else goes: spaces, '=', newlines, any UTF-8.
    let env = pairs(&[("A", "x = y\nz ✓"), ("lower.dotted-name", "")]);
    validate_process_env(&env).unwrap();
}

#[test]
fn image_layer_keeps_order_empty_values_and_last_duplicate() {
    let layer = image_layer(&[
        "A=1".into(),
        "B=".into(),
        "NOVALUE".into(),
        "A=2".into(),
        "C=x=y".into(),
    ]);
    assert_eq!(layer, pairs(&[("A", "2"), ("B", ""), ("C", "x=y")]));
}

#[test]
fn template_env_steps_expand_like_docker_build() {
    let image: Vec<String> = vec!["PYTHONPATH=/app/lib".into(), "EMPTY=".into()];
    let mut t = TemplateEnv::from_image(&image);
    t.apply("PYTHONPATH", "$PYTHONPATH:/extra").unwrap();
    assert_eq!(t.get("PYTHONPATH"), Some("/app/lib:/extra"));
    t.apply("PATH", "/opt/bin:$PATH").unwrap();
    assert_eq!(t.get("PATH"), Some(&*format!("/opt/bin:{DEFAULT_PATH}")));
    t.apply("GREETING", "${NAME:-world} \\$HOME ${EMPTY:+set}")
        .unwrap();
    assert_eq!(t.get("GREETING"), Some("world $HOME "));
    t.apply("NAME", "hutch").unwrap();
    t.apply("GREETING", "${NAME:-world}${NAME:+!}").unwrap();
    assert_eq!(t.get("GREETING"), Some("hutch!"));
    assert!(t.apply("A=B", "x").is_err());
    let layer = t.into_layer();
    assert_no_duplicates(&layer);
    assert_eq!(layer[0], ("PYTHONPATH".into(), "/app/lib:/extra".into()));
}

#[test]
fn expansion_edge_cases() {
    let look = |n: &str| match n {
        "A" => Some("1"),
        "E" => Some(""),
        _ => None,
    };
    assert_eq!(expand("$A$B.${A}", look), "1.1");
    assert_eq!(expand("cost: $5 and $", look), "cost: $5 and $");
    assert_eq!(expand("${A", look), "${A");
    assert_eq!(expand("${E:-d}${E:+x}", look), "d");
    assert_eq!(expand("${B:-$A}", look), "1");
}

fn env_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
    // A small alphabet so that names collide across and within layers.
    prop::collection::vec(("[A-D_]{1,2}", "[a-z= ]{0,3}"), 0..8)
}

/// A snapshot's template layer is its template's with the sandbox's
/// variables set over it, taken literally; a sandbox created from the
/// snapshot resolves as the snapshotted one did, and its own variables win.
#[test]
fn a_snapshot_keeps_the_sandbox_layer_below_new_sandboxes() {
    let template = pairs(&[
        ("PATH", "/opt/tool/bin:/usr/bin"),
        ("OVERRIDE", "image"),
        ("A", "1"),
    ]);
    let sandbox = pairs(&[
        ("OVERRIDE", "sandbox"),
        ("LITERAL", "$PATH and ${A}"),
        ("E", ""),
    ]);
    let layer = snapshot_layer(&template, &sandbox);
    assert_eq!(
        layer,
        pairs(&[
            ("PATH", "/opt/tool/bin:/usr/bin"),
            ("OVERRIDE", "sandbox"),
            ("A", "1"),
            ("LITERAL", "$PATH and ${A}"),
            ("E", ""),
        ])
    );
    let before = resolve(
        &TemplateLayer {
            env: &template,
            user: None,
            workdir: None,
        },
        &SandboxLayer {
            env: &sandbox,
            workdir: None,
        },
        &ProcessLayer::default(),
        &ID,
        &accounts(),
    )
    .unwrap();
    let after = resolve(
        &TemplateLayer {
            env: &layer,
            user: None,
            workdir: None,
        },
        &SandboxLayer::default(),
        &ProcessLayer::default(),
        &ID,
        &accounts(),
    )
    .unwrap();
    assert_eq!(before.env, after.env);
    let own = pairs(&[("OVERRIDE", "fork")]);
    let fork = resolve(
        &TemplateLayer {
            env: &layer,
            user: None,
            workdir: None,
        },
        &SandboxLayer {
            env: &own,
            workdir: None,
        },
        &ProcessLayer::default(),
        &ID,
        &accounts(),
    )
    .unwrap();
    assert_eq!(fork.var("OVERRIDE"), Some("fork"));
}

proptest! {
    #[test]
    fn resolved_env_never_has_duplicate_names(
        image in env_strategy(),
        sandbox in env_strategy(),
        process in env_strategy(),
        pty in any::<bool>(),
    ) {
        let image_strings: Vec<String> = image.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let template = image_layer(&image_strings);
        assert_no_duplicates(&template);
        let r = resolve(
            &TemplateLayer { env: &template, user: None, workdir: None },
            &SandboxLayer { env: &sandbox, workdir: None },
            &ProcessLayer { env: &process, user: None, cwd: None, pty },
            &ID,
            &accounts(),
        ).unwrap();
        assert_no_duplicates(&r.env);
        // The highest layer that sets a name decides its value.
        for (name, _) in image.iter().chain(&sandbox).chain(&process) {
            let expected = process.iter().rev().find(|(k, _)| k == name)
                .or_else(|| sandbox.iter().rev().find(|(k, _)| k == name))
                .or_else(|| image.iter().rev().find(|(k, _)| k == name))
                .map(|(_, v)| v.as_str());
            prop_assert_eq!(r.var(name), expected);
        }
    }
}
