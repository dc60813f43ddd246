//! `GET /files` and `POST /files`: downloads, uploads (multipart, raw,
//! gzip, chunked), ownership, metadata, signed URLs and the access token.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use hutch_envd::transfer::file_signature;
use hutch_protocol::envd::filesystem::{
    EventType, StatRequest, WatchDirRequest, watch_dir_response,
};
use serde_json::{Value, json};

const NOBODY: u32 = 65534;

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// Percent-encodes a query value.
fn q(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn json_body(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// A multipart body with one `file` part per `(filename, data)`.
fn multipart(boundary: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, data) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

/// Nothing but `expected` in `dir` (no temporary files left behind).
fn assert_only(dir: &Path, expected: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, expected, "in {}", dir.display());
}

/// Data gzip cannot shrink (random bytes here; archives, media, weights in
/// life) goes uncompressed to a client that accepts gzip — unless the
/// client refuses anything else.
#[tokio::test]
async fn incompressible_downloads_are_not_gzipped() {
    let t = TestAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("random.bin");
    let mut data = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&file, &data).unwrap();
    let url = format!("{}/files?path={}", t.url(), q(&s(&file)));

    let (status, headers, body) = raw(
        "GET",
        &url,
        &[("accept-encoding", "gzip, deflate")],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers.get("content-encoding").is_none(), "{headers:?}");
    assert_eq!(headers["content-length"], data.len().to_string().as_str());
    assert_eq!(body, data);

    let (status, headers, body) = raw(
        "GET",
        &url,
        &[("accept-encoding", "gzip, identity;q=0")],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(gunzip(&body), data);
}

#[tokio::test]
async fn download_plain_and_gzip() {
    let t = TestAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data file.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let url = format!("{}/files?path={}", t.url(), q(&s(&file)));

    let (status, headers, body) = raw("GET", &url, &[], Vec::new()).await;
    assert_eq!(status, 200);
    assert_eq!(body, data);
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(headers["content-length"], data.len().to_string().as_str());
    assert_eq!(
        headers["content-disposition"],
        "inline; filename=\"data file.bin\""
    );
    assert!(headers.get("content-encoding").is_none());

    let (status, headers, body) = raw(
        "GET",
        &url,
        &[("accept-encoding", "gzip, deflate")],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["vary"], "Accept-Encoding");
    assert!(body.len() < data.len());
    assert_eq!(gunzip(&body), data);

    // Relative to the user's home; as another user.
    let (status, _, body) = raw(
        "GET",
        &format!("{}/files?path={}&username=nobody", t.url(), q(&s(&file))),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), data.len());

    // Empty files, and files whose size the kernel makes up.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let (status, _, body) = raw(
        "GET",
        &format!("{}/files?path={}", t.url(), q(&s(&empty))),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!((status, body.len()), (200, 0));
    let (status, _, body) = raw(
        "GET",
        &format!("{}/files?path=/proc/self/status", t.url()),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(String::from_utf8(body).unwrap().contains("Pid:"));
}

#[tokio::test]
async fn download_errors_are_json() {
    let t = TestAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt");
    let (status, headers, body) = raw(
        "GET",
        &format!("{}/files?path={}", t.url(), q(&s(&missing))),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let err = json_body(&body);
    assert_eq!(err["code"], 404);
    assert!(err["message"].as_str().unwrap().contains("missing.txt"));

    let (status, _, body) = raw(
        "GET",
        &format!("{}/files?path={}", t.url(), q(&s(dir.path()))),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(json_body(&body)["code"], 400);

    let (status, _, body) = raw(
        "GET",
        &format!("{}/files?path=/etc/hostname&username=no-such-user", t.url()),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(json_body(&body)["code"], 401);
}

#[tokio::test]
async fn multipart_upload_of_two_files_as_a_user() {
    let t = TestAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("new/parents/a.txt");
    let b = dir.path().join("other/b.bin");
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let boundary = "----hutchboundary7MA4YWxkTrZu0gW";
    let body = multipart(boundary, &[(&s(&a), b"hello a"), (&s(&b), &big)]);
    // Chunked, as the JS SDK sends multipart bodies.
    let chunks: Vec<Vec<u8>> = body.chunks(100_003).map(<[u8]>::to_vec).collect();
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let (status, _, reply) = raw_chunked(
        "POST",
        &format!("{}/files?username=nobody", t.url()),
        &[("content-type", &content_type)],
        chunks,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    assert_eq!(
        json_body(&reply),
        json!([
            {"name": "a.txt", "type": "file", "path": s(&a)},
            {"name": "b.bin", "type": "file", "path": s(&b)},
        ])
    );
    assert_eq!(std::fs::read(&a).unwrap(), b"hello a");
    assert_eq!(std::fs::read(&b).unwrap(), big);
    for p in [&a, &b] {
        let m = std::fs::metadata(p).unwrap();
        assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY), "{}", p.display());
        assert_eq!(m.mode() & 0o777, 0o644);
    }
    for p in ["new", "new/parents", "other"] {
        let m = std::fs::metadata(dir.path().join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY), "{p}");
    }
    assert_eq!(std::fs::metadata(dir.path()).unwrap().uid(), 0);
    assert_only(&dir.path().join("new/parents"), &["a.txt"]);

    // The SDK's single-file form: `path` plus the same path as filename;
    // a relative filename with a directory `path` lands inside it.
    let c = dir.path().join("c.txt");
    let body = multipart(boundary, &[(&s(&c), b"c")]);
    let (status, _, reply) = raw(
        "POST",
        &format!("{}/files?path={}", t.url(), q(&s(&c))),
        &[("content-type", &content_type)],
        body,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json_body(&reply)[0]["path"], s(&c));
    assert_eq!(
        std::fs::metadata(&c).unwrap().uid(),
        0,
        "default user: root"
    );
    let body = multipart(boundary, &[("d.txt", b"d")]);
    let (status, _, reply) = raw(
        "POST",
        &format!("{}/files?path={}", t.url(), q(&s(dir.path()))),
        &[("content-type", &content_type)],
        body,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    assert_eq!(std::fs::read(dir.path().join("d.txt")).unwrap(), b"d");

    // Two parts for one path, and a form without `file` parts, are refused.
    let body = multipart(boundary, &[(&s(&c), b"1"), (&s(&c), b"2")]);
    let (status, _, reply) = raw(
        "POST",
        &format!("{}/files", t.url()),
        &[("content-type", &content_type)],
        body,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(json_body(&reply)["code"], 400);
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--{boundary}--\r\n"
    );
    let (status, _, _) = raw(
        "POST",
        &format!("{}/files", t.url()),
        &[("content-type", &content_type)],
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn octet_stream_uploads_plain_and_gzip() {
    let t = TestAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("deep/er/raw.txt");
    let data: Vec<u8> = b"line of text\n".repeat(50_000);
    let url = format!("{}/files?path={}&username=nobody", t.url(), q(&s(&target)));
    let chunks: Vec<Vec<u8>> = data.chunks(65_536).map(<[u8]>::to_vec).collect();
    let (status, _, reply) = raw_chunked(
        "POST",
        &url,
        &[("content-type", "application/octet-stream")],
        chunks,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    assert_eq!(
        json_body(&reply),
        json!([{"name": "raw.txt", "type": "file", "path": s(&target)}])
    );
    assert_eq!(std::fs::read(&target).unwrap(), data);
    assert_eq!(std::fs::metadata(&target).unwrap().uid(), NOBODY);
    assert_eq!(
        std::fs::metadata(dir.path().join("deep")).unwrap().uid(),
        NOBODY
    );

    // gzip, in small chunks, overwriting: the old mode stays.
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let new: Vec<u8> = (0..500_000u32).map(|i| (i % 97) as u8).collect();
    let compressed = gzip(&new);
    let chunks: Vec<Vec<u8>> = compressed.chunks(1000).map(<[u8]>::to_vec).collect();
    let (status, _, reply) = raw_chunked(
        "POST",
        &url,
        &[
            ("content-type", "application/octet-stream"),
            ("content-encoding", "gzip"),
        ],
        chunks,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    assert_eq!(std::fs::read(&target).unwrap(), new);
    assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o777, 0o600);
    assert_only(&dir.path().join("deep/er"), &["raw.txt"]);

    // Empty body: an empty file.
    let empty = dir.path().join("empty.txt");
    let (status, _, _) = raw(
        "POST",
        &format!("{}/files?path={}", t.url(), q(&s(&empty))),
        &[("content-type", "application/octet-stream")],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(std::fs::read(&empty).unwrap(), b"");

    // Raw uploads need a path; unknown types and encodings are refused.
    for (headers, path) in [
        (vec![("content-type", "application/octet-stream")], None),
        (vec![("content-type", "text/plain")], Some(&empty)),
        (
            vec![
                ("content-type", "application/octet-stream"),
                ("content-encoding", "br"),
            ],
            Some(&empty),
        ),
    ] {
        let url = match path {
            Some(p) => format!("{}/files?path={}", t.url(), q(&s(p))),
            None => format!("{}/files", t.url()),
        };
        let (status, _, reply) = raw("POST", &url, &headers, b"x".to_vec()).await;
        assert_eq!(status, 400, "{headers:?}");
        assert_eq!(json_body(&reply)["code"], 400);
    }
    // A directory is not a file.
    let (status, _, _) = raw(
        "POST",
        &format!("{}/files?path={}", t.url(), q(&s(dir.path()))),
        &[("content-type", "application/octet-stream")],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_failed_upload_leaves_nothing_behind() {
    let t = TestAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("keep.txt");
    std::fs::write(&existing, b"original").unwrap();
    let fresh = dir.path().join("fresh.txt");

    // A gzip body that breaks off half way.
    let compressed = gzip(&vec![7u8; 200_000]);
    let truncated = compressed[..compressed.len() / 2].to_vec();
    for target in [&existing, &fresh] {
        let (status, _, reply) = raw_chunked(
            "POST",
            &format!("{}/files?path={}", t.url(), q(&s(target))),
            &[
                ("content-type", "application/octet-stream"),
                ("content-encoding", "gzip"),
            ],
            vec![truncated.clone()],
        )
        .await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&reply));
        assert!(
            json_body(&reply)["message"]
                .as_str()
                .unwrap()
                .contains("gzip")
        );
    }
    assert_eq!(std::fs::read(&existing).unwrap(), b"original");
    assert_only(dir.path(), &["keep.txt"]);

    // A multipart body that ends inside a part.
    let boundary = "b0undary";
    let mut body = multipart(boundary, &[(&s(&fresh), &[1u8; 10_000])]);
    body.truncate(5_000);
    let (status, _, _) = raw(
        "POST",
        &format!("{}/files", t.url()),
        &[(
            "content-type",
            &format!("multipart/form-data; boundary={boundary}"),
        )],
        body,
    )
    .await;
    assert_eq!(status, 400);
    assert_only(dir.path(), &["keep.txt"]);
}

#[tokio::test]
async fn metadata_headers_become_xattrs_and_entry_metadata() {
    let t = TestAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("meta.txt");
    let url = format!("{}/files?path={}", t.url(), q(&s(&target)));
    let (status, _, reply) = raw(
        "POST",
        &url,
        &[
            ("content-type", "application/octet-stream"),
            ("x-metadata-Author", "mish"),
            ("X-Metadata-purpose", "upload"),
        ],
        b"with metadata".to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let expected = json!({"author": "mish", "purpose": "upload"});
    assert_eq!(json_body(&reply)[0]["metadata"], expected);

    // Stored as user.e2b.* xattrs…
    let cpath = std::ffi::CString::new(s(&target)).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid NUL-terminated strings and a writable buffer.
    let n = unsafe {
        libc::getxattr(
            cpath.as_ptr(),
            c"user.e2b.author".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(&buf[..n as usize], b"mish");

    // …and surfaced by Stat and ListDir.
    let client = t.fs_client();
    let entry = client
        .stat(StatRequest {
            path: s(&target),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned()
        .entry
        .into_option()
        .unwrap();
    let mut metadata: Vec<_> = entry.metadata.into_iter().collect();
    metadata.sort();
    assert_eq!(
        metadata,
        vec![
            ("author".to_owned(), "mish".to_owned()),
            ("purpose".to_owned(), "upload".to_owned())
        ]
    );
    let listed = client
        .list_dir(hutch_protocol::envd::filesystem::ListDirRequest {
            path: s(dir.path()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned()
        .entries;
    assert_eq!(
        listed[0].metadata.get("author").map(String::as_str),
        Some("mish")
    );

    // Multipart uploads carry it to every file.
    let boundary = "mb";
    let other = dir.path().join("other.txt");
    let (status, _, reply) = raw(
        "POST",
        &format!("{}/files", t.url()),
        &[
            (
                "content-type",
                &format!("multipart/form-data; boundary={boundary}"),
            ),
            ("x-metadata-source", "suite"),
        ],
        multipart(boundary, &[(&s(&other), b"1")]),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json_body(&reply)[0]["metadata"], json!({"source": "suite"}));

    // Overwriting without metadata clears it; no `metadata` key then.
    let (status, _, reply) = raw(
        "POST",
        &url,
        &[("content-type", "application/octet-stream")],
        b"plain".to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(json_body(&reply)[0].get("metadata").is_none());
    let entry = client
        .stat(StatRequest {
            path: s(&target),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned()
        .entry
        .into_option()
        .unwrap();
    assert!(entry.metadata.is_empty());

    // Invalid metadata is refused before anything is written.
    let bad = dir.path().join("bad.txt");
    let (status, _, _) = raw(
        "POST",
        &format!("{}/files?path={}", t.url(), q(&s(&bad))),
        &[
            ("content-type", "application/octet-stream"),
            ("x-metadata-k", &"v".repeat(5000)),
        ],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(!bad.exists());
}

#[tokio::test]
async fn watchers_see_an_upload_as_e2b_reports_it() {
    use EventType::*;
    let t = TestAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut stream = t
        .fs_client()
        .watch_dir(WatchDirRequest {
            path: s(dir.path()),
            recursive: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let first = stream.message().await.unwrap().unwrap().to_owned_message();
    assert!(matches!(
        first.event,
        Some(watch_dir_response::Event::Start(_))
    ));

    let target = dir.path().join("up.txt");
    let (status, _, _) = raw(
        "POST",
        &format!("{}/files?path={}", t.url(), q(&s(&target))),
        &[("content-type", "application/octet-stream")],
        b"uploaded".to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    // A marker tells when the upload's events are all in.
    std::fs::create_dir(dir.path().join("marker")).unwrap();
    let mut events = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .to_owned_message();
        if let Some(watch_dir_response::Event::Filesystem(e)) = msg.event {
            if e.name == "marker" {
                break;
            }
            events.push((e.name.clone(), e.r#type.as_known().unwrap()));
        }
    }
    assert_eq!(
        events,
        vec![
            ("up.txt".to_owned(), EVENT_TYPE_CREATE),
            ("up.txt".to_owned(), EVENT_TYPE_CHMOD),
            ("up.txt".to_owned(), EVENT_TYPE_WRITE),
        ]
    );
}

#[tokio::test]
async fn signed_urls_and_the_access_token() {
    let t = TestAgent::start().await;
    let token = "s3cret-token";
    assert_eq!(t.init(json!({"accessToken": token})).await, 204);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signed.txt");
    std::fs::write(&file, b"signed content").unwrap();
    let path = s(&file);
    let get = |query: String, headers: Vec<(&'static str, String)>| {
        let url = format!("{}/files?{query}", t.url());
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, _, body) = raw("GET", &url, &headers, Vec::new()).await;
            (status, body)
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    // No token, no signature.
    let (status, body) = get(format!("path={}", q(&path)), vec![]).await;
    assert_eq!(status, 401);
    assert_eq!(json_body(&body)["code"], 401);
    // The header token.
    let (status, body) = get(
        format!("path={}", q(&path)),
        vec![("x-access-token", token.into())],
    )
    .await;
    assert_eq!((status, body.as_slice()), (200, &b"signed content"[..]));
    let (status, _) = get(
        format!("path={}", q(&path)),
        vec![("x-access-token", "nope".into())],
    )
    .await;
    assert_eq!(status, 401);

    // A signature without expiration.
    let sig = file_signature(&path, "read", "", token, None);
    let (status, body) = get(format!("path={}&signature={}", q(&path), q(&sig)), vec![]).await;
    assert_eq!((status, body.as_slice()), (200, &b"signed content"[..]));
    // With a user: it is part of what is signed.
    let sig_user = file_signature(&path, "read", "nobody", token, None);
    let (status, _) = get(
        format!(
            "path={}&username=nobody&signature={}",
            q(&path),
            q(&sig_user)
        ),
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = get(
        format!("path={}&username=root&signature={}", q(&path), q(&sig_user)),
        vec![],
    )
    .await;
    assert_eq!(status, 401);
    // With an expiration in the future, and in the past.
    let exp = now + 300;
    let sig = file_signature(&path, "read", "", token, Some(exp));
    let (status, _) = get(
        format!(
            "path={}&signature={}&signature_expiration={exp}",
            q(&path),
            q(&sig)
        ),
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = get(
        format!(
            "path={}&signature={}&signature_expiration={}",
            q(&path),
            q(&sig),
            exp + 1
        ),
        vec![],
    )
    .await;
    assert_eq!(status, 401, "the expiration is signed");
    let past = now - 10;
    let sig = file_signature(&path, "read", "", token, Some(past));
    let (status, body) = get(
        format!(
            "path={}&signature={}&signature_expiration={past}",
            q(&path),
            q(&sig)
        ),
        vec![],
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        json_body(&body)["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    // Wrong: another path, a write signature, a made-up one.
    let other = file_signature("/etc/passwd", "read", "", token, None);
    let (status, _) = get(format!("path={}&signature={}", q(&path), q(&other)), vec![]).await;
    assert_eq!(status, 401);
    let write_sig = file_signature(&path, "write", "", token, None);
    let (status, _) = get(
        format!("path={}&signature={}", q(&path), q(&write_sig)),
        vec![],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = get(format!("path={}&signature=v1_bogus", q(&path)), vec![]).await;
    assert_eq!(status, 401);

    // Uploads take write signatures.
    let target = dir.path().join("up.txt");
    let tpath = s(&target);
    let upload = |query: String| {
        let url = format!("{}/files?{query}", t.url());
        async move {
            raw(
                "POST",
                &url,
                &[("content-type", "application/octet-stream")],
                b"up".to_vec(),
            )
            .await
            .0
        }
    };
    assert_eq!(upload(format!("path={}", q(&tpath))).await, 401);
    let read_sig = file_signature(&tpath, "read", "", token, None);
    assert_eq!(
        upload(format!("path={}&signature={}", q(&tpath), q(&read_sig))).await,
        401
    );
    assert!(!target.exists());
    let sig = file_signature(&tpath, "write", "", token, Some(now + 60));
    assert_eq!(
        upload(format!(
            "path={}&signature={}&signature_expiration={}",
            q(&tpath),
            q(&sig),
            now + 60
        ))
        .await,
        200
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"up");

    // Other routes still want the header.
    let (status, _, _) = raw(
        "GET",
        &format!("{}/envs?signature={}", t.url(), q(&sig)),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn polling_watcher_has_an_upload_s_events_right_away() {
    use EventType::*;
    let t = TestAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = t.fs_client();
    let id = client
        .create_watcher(hutch_protocol::envd::filesystem::CreateWatcherRequest {
            path: s(dir.path()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned()
        .watcher_id;
    for i in 0..50 {
        let target = dir.path().join(format!("f{i}.txt"));
        let (status, _, _) = raw(
            "POST",
            &format!("{}/files?path={}", t.url(), q(&s(&target))),
            &[("content-type", "application/octet-stream")],
            b"data".to_vec(),
        )
        .await;
        assert_eq!(status, 200);
        // As the SDKs' `get_new_events` right after a write: no waiting.
        let events: Vec<_> = client
            .get_watcher_events(hutch_protocol::envd::filesystem::GetWatcherEventsRequest {
                watcher_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_owned()
            .events
            .into_iter()
            .map(|e| (e.name, e.r#type.as_known().unwrap()))
            .collect();
        let name = format!("f{i}.txt");
        assert_eq!(
            events,
            vec![
                (name.clone(), EVENT_TYPE_CREATE),
                (name.clone(), EVENT_TYPE_CHMOD),
                (name, EVENT_TYPE_WRITE),
            ],
            "upload {i}"
        );
    }
}

/// A 1 MiB tmpfs, unmounted on drop; `None` where mounting is not allowed.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    /// Panics, saying why, when the tmpfs cannot be mounted (the test
    /// needs root).
    fn mount() -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let target = std::ffi::CString::new(s(dir.path())).unwrap();
        // SAFETY: valid NUL-terminated strings; a plain mount(2) call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=1m".as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "cannot mount a 1 MiB tmpfs (this test needs root): {}",
            std::io::Error::last_os_error()
        );
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(s(self.0.path())).unwrap();
        // SAFETY: a plain umount2(2) call on our own mount point.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[tokio::test]
async fn out_of_space_is_507_and_leaves_nothing() {
    let fs = SmallFs::mount();
    let t = TestAgent::start().await;
    let target = fs.0.path().join("sub/too-big.bin");
    let (status, _, reply) = raw_chunked(
        "POST",
        &format!("{}/files?path={}", t.url(), q(&s(&target))),
        &[("content-type", "application/octet-stream")],
        vec![vec![1u8; 1 << 20]; 3],
    )
    .await;
    assert_eq!(status, 507, "{}", String::from_utf8_lossy(&reply));
    let err = json_body(&reply);
    assert_eq!(err["code"], 507);
    assert_only(&fs.0.path().join("sub"), &[]);
}
