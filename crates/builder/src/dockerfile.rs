//! The Dockerfile frontend: parses a Dockerfile (with the `parse-dockerfile`
//! crate) into a [`Recipe`].
//!
//! Supported: `FROM` (one stage), `RUN` (shell and exec form), `ENV`, `ARG`
//! (also before `FROM`, for the `FROM` line), `WORKDIR`, `USER`, `COPY` and
//! `ADD` from the build context (`--chown`, `--chmod`), `SHELL`. Accepted and
//! ignored, with a note in the build log: `CMD`, `ENTRYPOINT`, `EXPOSE`,
//! `LABEL`, `MAINTAINER`, `HEALTHCHECK`, `STOPSIGNAL`, `VOLUME` — a
//! sandbox has no main process (use a start command instead), ports are all
//! reachable through the front door, and volumes are not a Hutch concept.
//! Rejected with an error naming the line: a second `FROM` (multi-stage
//! builds), `COPY --from`, `RUN --mount`/`--network`/`--security`,
//! here-documents, `ONBUILD`, `ADD <url>`.

use parse_dockerfile::{Command as DockerCommand, Flag, Instruction, Source};

use crate::BuildError;
use crate::recipe::{Copy, Recipe, RunCommand, Step, StepKind};

/// Parses `text` into a recipe. `build_args` only serve to expand the
/// `FROM` line (`ARG`s declared before it); the engine applies them to the
/// steps.
pub fn parse(text: &str, build_args: &[(String, String)]) -> Result<Recipe, BuildError> {
    let file = parse_dockerfile::parse(text).map_err(|e| BuildError::Dockerfile {
        line: Some(e.line()).filter(|&l| l > 0),
        message: format!("{e:#}"),
    })?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let snippet = |offset: usize| {
        let start = offset.min(text.len());
        let line = text[start..].lines().next().unwrap_or("").trim();
        line.chars().take(120).collect::<String>()
    };
    let err = |offset: usize, message: String| BuildError::Dockerfile {
        line: Some(line_of(offset)),
        message,
    };

    let mut froms = 0;
    let mut recipe = Recipe {
        from: String::new(),
        from_line: None,
        steps: Vec::new(),
        start_cmd: None,
        ready_cmd: None,
        notes: Vec::new(),
    };
    // ARGs before FROM: only for expanding the FROM line.
    let mut meta_args: Vec<(String, String)> = Vec::new();

    for instruction in &file.instructions {
        let start = keyword_start(instruction);
        let line = line_of(start);
        let text_of = || snippet(start);
        if froms == 0 {
            match instruction {
                Instruction::Arg(arg) => {
                    for (name, default) in parse_args(&arg.arguments.value)
                        .map_err(|m| err(start, format!("ARG: {m}")))?
                    {
                        let value = build_args
                            .iter()
                            .find(|(k, _)| *k == name)
                            .map(|(_, v)| v.clone())
                            .or(default);
                        if let Some(v) = value {
                            meta_args.push((name, v));
                        }
                    }
                    continue;
                }
                Instruction::From(_) => {}
                _ => {
                    return Err(err(
                        start,
                        "a Dockerfile must start with FROM (only ARG may come before it)"
                            .to_owned(),
                    ));
                }
            }
        }
        let mut step = |kind: StepKind| {
            recipe.steps.push(Step {
                line: Some(line),
                text: text_of(),
                kind,
                force: false,
            })
        };
        match instruction {
            Instruction::From(from) => {
                froms += 1;
                if froms > 1 {
                    return Err(err(
                        start,
                        "multi-stage builds are not supported: build each stage as its own template (`hutch template build --name …`) and start the next one `FROM <that template>`".to_owned(),
                    ));
                }
                for flag in &from.options {
                    match flag_name(flag) {
                        "platform" => {
                            let p = flag_value(flag);
                            if !matches!(p, "linux/amd64" | "linux/x86_64" | "$BUILDPLATFORM" | "$TARGETPLATFORM") {
                                return Err(err(start, format!("FROM --platform={p}: Hutch runs linux/amd64 only")));
                            }
                        }
                        other => return Err(err(start, format!("FROM --{other} is not supported"))),
                    }
                }
                let image = hutch_env::expand(&from.image.value, |name| {
                    meta_args
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.as_str())
                });
                if image.is_empty() {
                    return Err(err(start, "FROM names no image".to_owned()));
                }
                if image == "scratch" {
                    return Err(err(
                        start,
                        "FROM scratch is not supported: a template needs a root filesystem to run its build steps; start from an image or a template".to_owned(),
                    ));
                }
                recipe.from = image;
                recipe.from_line = Some(line);
            }
            Instruction::Run(run) => {
                if let Some(flag) = run.options.first() {
                    return Err(err(
                        start,
                        format!("RUN --{} is not supported", flag_name(flag)),
                    ));
                }
                if !run.here_docs.is_empty() {
                    return Err(err(
                        start,
                        "here-documents in RUN are not supported; put the script in a file, COPY it and RUN it".to_owned(),
                    ));
                }
                let command = match &run.arguments {
                    DockerCommand::Exec(args) => RunCommand::Exec(
                        args.value.iter().map(|a| a.value.to_string()).collect(),
                    ),
                    DockerCommand::Shell(s) => RunCommand::Shell(s.value.to_owned()),
                    _ => return Err(err(start, "unsupported RUN form".to_owned())),
                };
                step(StepKind::Run {
                    command,
                    user: None,
                });
            }
            Instruction::Env(env) => {
                let pairs = parse_env(&env.arguments.value)
                    .map_err(|m| err(start, format!("ENV: {m}")))?;
                step(StepKind::Env(pairs));
            }
            Instruction::Arg(arg) => {
                for (name, default) in parse_args(&arg.arguments.value)
                    .map_err(|m| err(start, format!("ARG: {m}")))?
                {
                    recipe.steps.push(Step {
                        line: Some(line),
                        text: text_of(),
                        kind: StepKind::Arg { name, default },
                        force: false,
                    });
                }
            }
            Instruction::Workdir(w) => {
                let dir = unquote(&w.arguments.value).map_err(|m| err(start, format!("WORKDIR: {m}")))?;
                step(StepKind::Workdir(dir));
            }
            Instruction::User(u) => {
                let name = unquote(&u.arguments.value).map_err(|m| err(start, format!("USER: {m}")))?;
                step(StepKind::User { name, sudo: false });
            }
            Instruction::Copy(c) => {
                let copy = copy_step(&c.options, &c.src, &c.dest.value, false)
                    .map_err(|m| err(start, format!("COPY: {m}")))?;
                step(StepKind::Copy(copy));
            }
            Instruction::Add(a) => {
                let copy = copy_step(&a.options, &a.src, &a.dest.value, true)
                    .map_err(|m| err(start, format!("ADD: {m}")))?;
                step(StepKind::Copy(copy));
            }
            Instruction::Shell(s) => {
                let shell: Vec<String> = s.arguments.iter().map(|a| a.value.to_string()).collect();
                if shell.is_empty() {
                    return Err(err(start, "SHELL needs at least one argument".to_owned()));
                }
                step(StepKind::Shell(shell));
            }
            Instruction::Onbuild(_) => {
                return Err(err(start, "ONBUILD is not supported".to_owned()));
            }
            Instruction::Cmd(_) | Instruction::Entrypoint(_) => recipe.notes.push(format!(
                "line {line}: {} is ignored: a sandbox has no main process; give the template a start command instead (`--start-cmd`)",
                text_of()
            )),
            _ => recipe.notes.push(format!("line {line}: {} is ignored", text_of())),
        }
    }
    if froms == 0 {
        return Err(BuildError::Dockerfile {
            line: None,
            message: "the Dockerfile has no FROM".to_owned(),
        });
    }
    Ok(recipe)
}

fn keyword_start(i: &Instruction<'_>) -> usize {
    let k = match i {
        Instruction::Add(x) => &x.add,
        Instruction::Arg(x) => &x.arg,
        Instruction::Cmd(x) => &x.cmd,
        Instruction::Copy(x) => &x.copy,
        Instruction::Entrypoint(x) => &x.entrypoint,
        Instruction::Env(x) => &x.env,
        Instruction::Expose(x) => &x.expose,
        Instruction::From(x) => &x.from,
        Instruction::Healthcheck(x) => &x.healthcheck,
        Instruction::Label(x) => &x.label,
        Instruction::Maintainer(x) => &x.maintainer,
        Instruction::Onbuild(x) => &x.onbuild,
        Instruction::Run(x) => &x.run,
        Instruction::Shell(x) => &x.shell,
        Instruction::Stopsignal(x) => &x.stopsignal,
        Instruction::User(x) => &x.user,
        Instruction::Volume(x) => &x.volume,
        Instruction::Workdir(x) => &x.workdir,
        _ => return 0,
    };
    k.span.start
}

fn flag_name<'a>(flag: &'a Flag<'_>) -> &'a str {
    &flag.name.value
}

fn flag_value<'a>(flag: &'a Flag<'_>) -> &'a str {
    flag.value.as_ref().map_or("", |v| &v.value)
}

fn copy_step(
    options: &[Flag<'_>],
    src: &[Source<'_>],
    dest: &str,
    extract: bool,
) -> Result<Copy, String> {
    let mut copy = Copy {
        sources: Vec::new(),
        dest: unquote(dest)?,
        chown: None,
        chmod: None,
        extract,
        files: None,
    };
    for flag in options {
        match flag_name(flag) {
            "chown" => copy.chown = Some(flag_value(flag).to_owned()),
            "chmod" => {
                let v = flag_value(flag);
                copy.chmod = Some(
                    u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| format!("--chmod={v}: give an octal mode such as 755"))?,
                );
            }
            "link" => {}
            "from" => {
                return Err(
                    "--from (copying from another stage or image) is not supported".to_owned(),
                );
            }
            other => return Err(format!("--{other} is not supported")),
        }
    }
    for s in src {
        match s {
            Source::Path(p) => {
                let p = unquote(&p.value)?;
                if extract && (p.starts_with("http://") || p.starts_with("https://")) {
                    return Err(format!(
                        "{p}: URLs are not supported; download the file in a RUN step"
                    ));
                }
                if p.starts_with("git@") {
                    return Err(format!("{p}: git sources are not supported"));
                }
                copy.sources.push(p);
            }
            _ => return Err("here-documents are not supported".to_owned()),
        }
    }
    if copy.sources.is_empty() {
        return Err("no source given".to_owned());
    }
    Ok(copy)
}

/// Splits instruction arguments into words as the Dockerfile shell-lexer
/// does: whitespace separates words; quotes group and are removed. The
/// result keeps `$` expansion markers for the expander: a `$` inside single
/// quotes (or escaped with a backslash) becomes `\$`, which the expander
/// turns into a literal `$`.
fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some('$') => cur.push_str("\\$"),
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote".to_owned()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('$') => cur.push_str("\\$"),
                            Some(c @ ('"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unterminated double quote".to_owned()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote".to_owned()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('$') => cur.push_str("\\$"),
                    Some(c) => cur.push(c),
                    None => {}
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// One word (quotes removed), for `WORKDIR`, `USER` and paths.
fn unquote(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !(s.starts_with('"') || s.starts_with('\'')) {
        return Ok(s.to_owned());
    }
    let w = words(s)?;
    match w.as_slice() {
        [one] => Ok(one.clone()),
        _ => Ok(s.to_owned()),
    }
}

/// `ENV k=v k2="v 2"` or the legacy `ENV k value with spaces`.
fn parse_env(s: &str) -> Result<Vec<(String, String)>, String> {
    let s = s.trim();
    let first = s.split_whitespace().next().unwrap_or("");
    if !first.contains('=') {
        // Legacy form: the rest of the line is the value.
        let (name, value) = s
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("`{s}` has no value"))?;
        let value = value.trim();
        let value = match words(value)?.as_slice() {
            [one] if value.starts_with(['"', '\'']) => one.clone(),
            _ => value.to_owned(),
        };
        return Ok(vec![(name.to_owned(), value)]);
    }
    words(s)?
        .into_iter()
        .map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("`{w}` is not NAME=VALUE"))
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|pairs| {
            if pairs.iter().any(|(k, _)| k.is_empty()) {
                Err("a variable name is empty".to_owned())
            } else {
                Ok(pairs)
            }
        })
}

/// `ARG name[=default] ...`.
fn parse_args(s: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let args: Vec<_> = words(s)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (w, None),
        })
        .collect();
    if args.is_empty() {
        return Err("no argument name".to_owned());
    }
    for (name, _) in &args {
        if name.is_empty() || !name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
            return Err(format!("invalid argument name `{name}`"));
        }
        if hutch_env::is_reserved(name) {
            return Err(format!(
                "`{name}` is set by Hutch for every sandbox and cannot be a build argument"
            ));
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(r: &Recipe) -> Vec<&StepKind> {
        r.steps.iter().map(|s| &s.kind).collect()
    }

    #[test]
    fn every_supported_instruction() {
        let text = r#"# syntax=docker/dockerfile:1
ARG BASE=debian
FROM ${BASE}:test
ENV A=1 B="two words" C='$HOME'
ENV LEGACY some value
ARG VERSION=1.0 OTHER
WORKDIR /app
USER user:user
COPY --chown=user:user --chmod=640 a.txt b/ /app/
ADD archive.tar /opt/
RUN echo hi && \
    echo there
RUN ["/bin/echo", "exec form"]
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
CMD ["python3"]
EXPOSE 8080
"#;
        let r = parse(text, &[("BASE".into(), "ubuntu".into())]).unwrap();
        assert_eq!(r.from, "ubuntu:test");
        assert_eq!(r.from_line, Some(3));
        let k = kinds(&r);
        assert_eq!(
            k[0],
            &StepKind::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "\\$HOME".into())
            ])
        );
        assert_eq!(
            k[1],
            &StepKind::Env(vec![("LEGACY".into(), "some value".into())])
        );
        assert_eq!(
            k[2],
            &StepKind::Arg {
                name: "VERSION".into(),
                default: Some("1.0".into())
            }
        );
        assert_eq!(
            k[3],
            &StepKind::Arg {
                name: "OTHER".into(),
                default: None
            }
        );
        assert_eq!(k[4], &StepKind::Workdir("/app".into()));
        assert_eq!(
            k[5],
            &StepKind::User {
                name: "user:user".into(),
                sudo: false
            }
        );
        match k[6] {
            StepKind::Copy(c) => {
                assert_eq!(c.sources, vec!["a.txt", "b/"]);
                assert_eq!(c.dest, "/app/");
                assert_eq!(c.chown.as_deref(), Some("user:user"));
                assert_eq!(c.chmod, Some(0o640));
                assert!(!c.extract);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(k[7], StepKind::Copy(c) if c.extract));
        match k[8] {
            StepKind::Run {
                command: RunCommand::Shell(s),
                ..
            } => assert!(s.contains("echo hi") && s.contains("echo there"), "{s}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            k[9],
            &StepKind::Run {
                command: RunCommand::Exec(vec!["/bin/echo".into(), "exec form".into()]),
                user: None
            }
        );
        assert!(matches!(k[10], StepKind::Shell(s) if s.len() == 4));
        assert_eq!(r.steps[8].line, Some(11));
        assert_eq!(r.notes.len(), 2, "{:?}", r.notes);
    }

    #[test]
    fn rejections_name_the_line() {
        let cases = [
            ("FROM a\nFROM b\n", 2, "multi-stage"),
            ("FROM a AS x\nRUN true\nFROM x\n", 3, "multi-stage"),
            ("FROM a\nCOPY --from=x /a /b\n", 2, "--from"),
            (
                "FROM a\nRUN --mount=type=cache,target=/x true\n",
                2,
                "--mount",
            ),
            ("RUN true\n", 1, "FROM"),
            ("FROM a\nADD https://example.com/x /x\n", 2, "URLs"),
            ("FROM a\nCOPY --chmod=9z x /x\n", 2, "octal"),
            ("FROM scratch\n", 1, "scratch"),
            ("FROM a\nARG E2B_SANDBOX_ID=x\n", 2, "set by Hutch"),
        ];
        for (text, line, needle) in cases {
            match parse(text, &[]) {
                Err(BuildError::Dockerfile { line: l, message }) => {
                    assert_eq!(l, Some(line), "{text}: {message}");
                    assert!(message.contains(needle), "{text}: {message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            parse("# nothing\n", &[]),
            Err(BuildError::Dockerfile { line: None, .. })
        ));
    }

    #[test]
    fn continuation_lines() {
        let r = parse("FROM a\nENV A=1 \\\n    B=\"x y\" \\\n    C=3\n", &[]).unwrap();
        assert_eq!(
            r.steps[0].kind,
            StepKind::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "x y".into()),
                ("C".into(), "3".into())
            ])
        );
    }

    #[test]
    fn word_splitting() {
        assert_eq!(
            words(r#"a "b c" 'd $e' \$f"#).unwrap(),
            vec!["a", "b c", "d \\$e", "\\$f"]
        );
        assert!(words("'open").is_err());
    }
}
