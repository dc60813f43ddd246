//! Variable expansion in `ENV`/`ARG`/`WORKDIR` values, as `docker build`
//! does it: `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME:+alternative}`,
//! and `\$` for a literal dollar. Unset variables expand to nothing.

/// Expands `raw`, looking variables up with `lookup`.
pub fn expand<'a>(raw: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    expand_dyn(raw, &lookup)
}

fn expand_dyn<'a>(raw: &str, lookup: &dyn Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'$') => {
                chars.next();
                out.push('$');
            }
            '$' => match chars.peek() {
                Some('{') => {
                    chars.next();
                    let mut body = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        body.push(c);
                    }
                    if !closed {
                        // Unterminated: keep it literally, as written.
                        out.push_str("${");
                        out.push_str(&body);
                        continue;
                    }
                    out.push_str(&expand_braced(&body, lookup));
                }
                Some(&c) if c == '_' || c.is_ascii_alphabetic() => {
                    let mut name = String::new();
                    while let Some(&c) = chars.peek() {
                        if c == '_' || c.is_ascii_alphanumeric() {
                            name.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    out.push_str(lookup(&name).unwrap_or(""));
                }
                _ => out.push('$'),
            },
            c => out.push(c),
        }
    }
    out
}

fn expand_braced<'a>(body: &str, lookup: &dyn Fn(&str) -> Option<&'a str>) -> String {
    if let Some((name, word)) = body.split_once(":-") {
        match lookup(name) {
            Some(v) if !v.is_empty() => v.to_owned(),
            _ => expand_dyn(word, lookup),
        }
    } else if let Some((name, word)) = body.split_once(":+") {
        match lookup(name) {
            Some(v) if !v.is_empty() => expand_dyn(word, lookup),
            _ => String::new(),
        }
    } else {
        lookup(body).unwrap_or("").to_owned()
    }
}
