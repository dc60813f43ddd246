//! Reading an image (OCI layout or Docker archive) out of a [`Source`] and importing its layers.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::digest::{HashReader, is_sha256_hex, sha256_hex, sha256_of, short};
use crate::source::{Source, normalize_rel};
use crate::store::StagedLayer;
use crate::{ImageConfig, ImageError, ImportProgress, ImportedImage, LayerStore};

use crate::MAX_METADATA_SIZE as METADATA_LIMIT;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// One layer to import: where its blob is and what it must hash to.
struct LayerPlan {
    rel: String,
    blob_digest: Option<String>,
    blob_size: Option<u64>,
    diff_id: String,
}

/// Context shared by the steps of one import.
struct Ctx<'a> {
    src: &'a Source,
    image: &'a str,
}

pub(crate) fn import_source(
    store: &LayerStore,
    src: &Source,
    image: &str,
    origin: &Path,
    reference: Option<&str>,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<ImportedImage, ImageError> {
    let ctx = Ctx { src, image };
    let is_oci = src.exists("oci-layout") && src.exists("index.json");
    let is_docker = src.exists("manifest.json");
    let (manifest_digest, config_digest, config, plans) = if is_oci {
        ctx.read_oci(reference)?
    } else if is_docker {
        ctx.read_docker(reference)?
    } else if src.unterminated() {
        return Err(ImageError::Archive {
            archive: image.to_owned(),
            detail: "it ends without an end-of-archive marker and holds neither oci-layout + \
                     index.json nor manifest.json, so it was probably cut short"
                .to_owned(),
        });
    } else {
        return Err(ImageError::NotAnImage {
            path: origin.to_owned(),
            reason: "it has neither oci-layout + index.json nor manifest.json at its top"
                .to_owned(),
        });
    };

    progress(ImportProgress::Manifest {
        layers: plans.len(),
    });
    let layers = ctx.import_layers(store, &plans, progress)?;
    Ok(ImportedImage {
        manifest_digest,
        config_digest,
        config: image_config(&config),
        layers,
    })
}

type Parsed = (String, String, ImageConfiguration, Vec<LayerPlan>);

/// A manifest that could be imported, with the names it goes by.
struct Candidate {
    desc: Descriptor,
    names: Vec<String>,
}

impl Ctx<'_> {
    fn invalid(&self, what: impl Into<String>, detail: impl Into<String>) -> ImageError {
        ImageError::Invalid {
            what: what.into(),
            image: self.image.to_owned(),
            detail: detail.into(),
        }
    }

    fn corrupt(&self, what: impl Into<String>, detail: impl Into<String>) -> ImageError {
        ImageError::Corrupt {
            what: what.into(),
            image: self.image.to_owned(),
            detail: detail.into(),
        }
    }

    fn missing(&self, what: impl Into<String>, rel: &str) -> ImageError {
        ImageError::Missing {
            what: what.into(),
            image: self.image.to_owned(),
            detail: format!("{rel} is not there{}", self.src.missing_hint()),
        }
    }

    fn read_file(&self, rel: &str, what: &str) -> Result<Vec<u8>, ImageError> {
        self.src
            .read_small(rel, self.image, METADATA_LIMIT)?
            .ok_or_else(|| self.missing(what, rel))
    }

    /// Reads a small blob named by a descriptor and checks its size and digest.
    fn read_blob(&self, desc: &Descriptor, what: &str) -> Result<Vec<u8>, ImageError> {
        let digest = desc.digest().to_string();
        let hex = sha256_hex(&digest).map_err(|e| ImageError::Unsupported {
            image: self.image.to_owned(),
            detail: format!("{what} has digest {digest:?} ({e}); only sha256 is supported"),
        })?;
        if desc.size() > METADATA_LIMIT {
            return Err(ImageError::TooLarge {
                what: what.to_owned(),
                image: self.image.to_owned(),
                limit: METADATA_LIMIT,
                detail: format!(
                    "its descriptor says {} bytes, more than the {METADATA_LIMIT} allowed for \
                     a manifest, index or config",
                    desc.size()
                ),
            });
        }
        let rel = format!("blobs/sha256/{hex}");
        let bytes = self.read_file(&rel, what)?;
        check_size_digest(
            self,
            what,
            desc.size(),
            &digest,
            bytes.len() as u64,
            &sha256_of(&bytes),
        )?;
        Ok(bytes)
    }

    fn parse<T: for<'de> Deserialize<'de>>(
        &self,
        bytes: &[u8],
        what: &str,
    ) -> Result<T, ImageError> {
        serde_json::from_slice(bytes)
            .map_err(|e| self.invalid(what, format!("cannot parse it: {e}")))
    }

    // ----- OCI layouts (and new-style docker save, which is one) -----

    fn read_oci(&self, reference: Option<&str>) -> Result<Parsed, ImageError> {
        let layout: serde_json::Value =
            self.parse(&self.read_file("oci-layout", "oci-layout")?, "oci-layout")?;
        if !layout
            .get("imageLayoutVersion")
            .is_some_and(|v| v.is_string())
        {
            return Err(self.invalid("oci-layout", "it has no imageLayoutVersion"));
        }
        let index: ImageIndex =
            self.parse(&self.read_file("index.json", "index.json")?, "index.json")?;

        let mut candidates = Vec::new();
        self.collect(index.manifests(), None, 0, &mut candidates)?;
        if candidates.is_empty() {
            return Err(self.invalid("index.json", "it lists no manifests"));
        }

        let chosen = match reference {
            Some(r) => {
                let named: Vec<&Candidate> = candidates
                    .iter()
                    .filter(|c| c.names.iter().any(|n| ref_matches(n, r)))
                    .collect();
                if named.is_empty() {
                    self.by_docker_tag(&candidates, r)?
                } else {
                    self.pick_platform(&named)?
                }
            }
            None => self.pick_platform(&candidates.iter().collect::<Vec<_>>())?,
        };

        let manifest_digest = chosen.desc.digest().to_string();
        let mwhat = format!("manifest {}", short(&manifest_digest));
        let manifest_bytes = self.read_blob(&chosen.desc, &mwhat)?;
        let manifest = self.parse_manifest(&manifest_bytes, &mwhat)?;

        let config_desc = manifest.config();
        let config_digest = config_desc.digest().to_string();
        let cwhat = format!("image config {}", short(&config_digest));
        let config: ImageConfiguration =
            self.parse(&self.read_blob(config_desc, &cwhat)?, &cwhat)?;

        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(self.invalid(
                &mwhat,
                format!(
                    "it lists {} layers but the image config lists {} diff ids",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut plans = Vec::new();
        for (i, (desc, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
            let digest = desc.digest().to_string();
            let hex = sha256_hex(&digest).map_err(|e| ImageError::Unsupported {
                image: self.image.to_owned(),
                detail: format!("layer {} has digest {digest:?} ({e})", i + 1),
            })?;
            self.check_diff_id(diff_id, i)?;
            plans.push(LayerPlan {
                rel: format!("blobs/sha256/{hex}"),
                blob_digest: Some(digest),
                blob_size: Some(desc.size()),
                diff_id: diff_id.clone(),
            });
        }
        Ok((manifest_digest, config_digest, config, plans))
    }

    /// Flattens index entries (descending into nested indexes) into candidate manifests. Names
    /// come from the top-level entry's annotations.
    fn collect(
        &self,
        descs: &[Descriptor],
        names: Option<&[String]>,
        depth: usize,
        out: &mut Vec<Candidate>,
    ) -> Result<(), ImageError> {
        for desc in descs {
            let names = names.map_or_else(|| names_of(desc), <[String]>::to_vec);
            if INDEX_TYPES.contains(&desc.media_type().to_string().as_str()) {
                if depth >= 4 {
                    return Err(ImageError::Unsupported {
                        image: self.image.to_owned(),
                        detail: "image indexes are nested more than 4 deep".to_owned(),
                    });
                }
                let what = format!("image index {}", short(desc.digest().as_ref()));
                let nested: ImageIndex = self.parse(&self.read_blob(desc, &what)?, &what)?;
                self.collect(nested.manifests(), Some(&names), depth + 1, out)?;
            } else {
                out.push(Candidate {
                    desc: desc.clone(),
                    names,
                });
            }
        }
        Ok(())
    }

    /// Picks from candidates: the only one, else the first for this host's platform, else the
    /// first that states no platform.
    fn pick_platform<'c>(&self, cands: &[&'c Candidate]) -> Result<&'c Candidate, ImageError> {
        if let [only] = cands {
            return Ok(only);
        }
        let wanted = host_platform();
        let platform_of = |c: &Candidate| {
            c.desc
                .platform()
                .as_ref()
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
        };
        if let Some(c) = cands
            .iter()
            .find(|c| platform_of(c).as_deref() == Some(wanted.as_str()))
        {
            return Ok(c);
        }
        if let Some(c) = cands.iter().find(|c| c.desc.platform().is_none()) {
            return Ok(c);
        }
        let mut available: Vec<String> = cands.iter().filter_map(|c| platform_of(c)).collect();
        available.dedup();
        Err(ImageError::NoSuitablePlatform {
            image: self.image.to_owned(),
            wanted,
            available: available.join(", "),
        })
    }

    /// New-style `docker save` output is an OCI layout plus manifest.json; a reference may
    /// match only a RepoTags entry there. Find the manifest whose config that entry names.
    fn by_docker_tag<'c>(
        &self,
        candidates: &'c [Candidate],
        reference: &str,
    ) -> Result<&'c Candidate, ImageError> {
        let not_found = || {
            let mut names: Vec<String> = candidates
                .iter()
                .flat_map(|c| c.names.iter().cloned())
                .collect();
            if let Ok(entries) = self.docker_entries() {
                names.extend(
                    entries
                        .into_iter()
                        .flat_map(|e| e.repo_tags.unwrap_or_default()),
                );
            }
            ImageError::ReferenceNotFound {
                reference: reference.to_owned(),
                image: self.image.to_owned(),
                available: list_or_none(names),
            }
        };
        if !self.src.exists("manifest.json") {
            return Err(not_found());
        }
        let entries = self.docker_entries()?;
        let Some(entry) = entries.iter().find(|e| {
            e.repo_tags
                .iter()
                .flatten()
                .any(|t| ref_matches(t, reference))
        }) else {
            return Err(not_found());
        };
        let Some(config_hex) = digest_in_name(&entry.config) else {
            return Err(not_found());
        };
        for c in candidates {
            let what = format!("manifest {}", short(c.desc.digest().as_ref()));
            let bytes = self.read_blob(&c.desc, &what)?;
            let Ok(m) = self.parse_manifest(&bytes, &what) else {
                continue;
            };
            if m.config().digest().to_string() == format!("sha256:{config_hex}") {
                return Ok(c);
            }
        }
        Err(not_found())
    }

    fn parse_manifest(&self, bytes: &[u8], what: &str) -> Result<ImageManifest, ImageError> {
        let value: serde_json::Value = self.parse(bytes, what)?;
        if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
            return Err(ImageError::Unsupported {
                image: self.image.to_owned(),
                detail: format!(
                    "{what} is a Docker schema 1 manifest; convert the image with a current \
                     tool (e.g. `skopeo copy ... oci:DIR`)"
                ),
            });
        }
        if value.get("manifests").is_some() {
            return Err(self.invalid(
                what,
                "it is an image index, not a manifest, but is not labelled as one",
            ));
        }
        serde_json::from_value(value)
            .map_err(|e| self.invalid(what, format!("cannot parse it: {e}")))
    }

    fn check_diff_id(&self, diff_id: &str, i: usize) -> Result<(), ImageError> {
        sha256_hex(diff_id)
            .map(|_| ())
            .map_err(|e| ImageError::Unsupported {
                image: self.image.to_owned(),
                detail: format!(
                    "the config's diff id for layer {} is {diff_id:?} ({e})",
                    i + 1
                ),
            })
    }

    // ----- Docker archives -----

    fn docker_entries(&self) -> Result<Vec<DockerEntry>, ImageError> {
        self.parse(
            &self.read_file("manifest.json", "manifest.json")?,
            "manifest.json",
        )
    }

    fn read_docker(&self, reference: Option<&str>) -> Result<Parsed, ImageError> {
        let entries = self.docker_entries()?;
        let entry = match reference {
            Some(r) => entries
                .iter()
                .find(|e| e.repo_tags.iter().flatten().any(|t| ref_matches(t, r)))
                .ok_or_else(|| ImageError::ReferenceNotFound {
                    reference: r.to_owned(),
                    image: self.image.to_owned(),
                    available: list_or_none(
                        entries
                            .iter()
                            .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
                            .collect(),
                    ),
                })?,
            None => entries
                .first()
                .ok_or_else(|| self.invalid("manifest.json", "it lists no images"))?,
        };
        // No manifest exists; identify the image by its manifest.json entry, serialized with a
        // fixed field order so the digest does not depend on serde_json's map ordering.
        let canonical = CanonicalDockerEntry {
            config: &entry.config,
            repo_tags: entry.repo_tags.as_deref().unwrap_or_default(),
            layers: &entry.layers,
        };
        let manifest_digest =
            sha256_of(&serde_json::to_vec(&canonical).expect("strings always serialize"));

        let config_rel = normalize_rel("", &entry.config).ok_or_else(|| {
            self.invalid(
                "manifest.json",
                format!("config path {:?} leaves the archive", entry.config),
            )
        })?;
        let config_bytes = self.read_file(&config_rel, "image config")?;
        let config_digest = sha256_of(&config_bytes);
        let cwhat = format!("image config {}", short(&config_digest));
        if let Some(hex) = digest_in_name(&config_rel) {
            let expected = format!("sha256:{hex}");
            if expected != config_digest {
                return Err(self.corrupt(
                    format!("image config {config_rel}"),
                    format!("digest mismatch (expected {expected}, got {config_digest})"),
                ));
            }
        }
        let config: ImageConfiguration = self.parse(&config_bytes, &cwhat)?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != entry.layers.len() {
            return Err(self.invalid(
                "manifest.json",
                format!(
                    "it lists {} layers but the image config lists {} diff ids",
                    entry.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut plans = Vec::new();
        for (i, (layer, diff_id)) in entry.layers.iter().zip(diff_ids).enumerate() {
            self.check_diff_id(diff_id, i)?;
            let rel = normalize_rel("", layer).ok_or_else(|| {
                self.invalid(
                    "manifest.json",
                    format!("layer path {layer:?} leaves the archive"),
                )
            })?;
            let blob_digest = digest_in_name(&rel)
                .filter(|_| rel.starts_with("blobs/"))
                .map(|hex| format!("sha256:{hex}"));
            plans.push(LayerPlan {
                rel,
                blob_digest,
                blob_size: None,
                diff_id: diff_id.clone(),
            });
        }
        Ok((manifest_digest, config_digest, config, plans))
    }

    // ----- Layers -----

    fn import_layers(
        &self,
        store: &LayerStore,
        plans: &[LayerPlan],
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<Vec<String>, ImageError> {
        let total = plans.len();
        let mut staged: Vec<StagedLayer> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for (index, plan) in plans.iter().enumerate() {
            let what = format!(
                "layer {} ({} of {total})",
                short(plan.blob_digest.as_deref().unwrap_or(&plan.diff_id)),
                index + 1
            );
            let opened = self.src.open(&plan.rel, self.image)?;
            let size = opened.as_ref().map_or(0, |(_, s)| *s);
            progress(ImportProgress::LayerStart {
                index,
                digest: plan
                    .blob_digest
                    .clone()
                    .unwrap_or_else(|| plan.diff_id.clone()),
                size: plan.blob_size.unwrap_or(size),
            });
            if store.has_layer(&plan.diff_id) || seen.contains(plan.diff_id.as_str()) {
                progress(ImportProgress::LayerDone {
                    index,
                    reused: true,
                });
                continue;
            }
            let Some((mut reader, size)) = opened else {
                return Err(self.missing(what, &plan.rel));
            };
            if let Some(expected) = plan.blob_size
                && expected != size
            {
                return Err(self.corrupt(
                    what,
                    format!(
                        "size mismatch (the manifest says {expected} bytes, the blob has {size})"
                    ),
                ));
            }
            let mut on_bytes = |done: u64| progress(ImportProgress::LayerBytes { index, done });
            let layer =
                match store.stage_layer(&mut reader, &what, self.image, false, &mut on_bytes) {
                    Ok(layer) => layer,
                    Err(err @ ImageError::Corrupt { .. }) => {
                        // A damaged blob usually breaks decompression or the tar first; if the
                        // blob's digest is wrong, say that, as it is the clearer diagnosis.
                        drop(reader);
                        return Err(self.digest_diagnosis(plan, &what).unwrap_or(err));
                    }
                    Err(err) => return Err(err),
                };
            drop(reader);
            if let Some(expected) = plan.blob_size
                && expected != layer.blob_size
            {
                return Err(self.corrupt(
                    what,
                    format!(
                        "size mismatch (the manifest says {expected} bytes, read {})",
                        layer.blob_size
                    ),
                ));
            }
            if let Some(expected) = &plan.blob_digest
                && *expected != layer.blob_digest
            {
                return Err(self.corrupt(
                    what,
                    format!(
                        "digest mismatch (expected {expected}, got {})",
                        layer.blob_digest
                    ),
                ));
            }
            if layer.diff_id != plan.diff_id {
                return Err(self.corrupt(
                    what,
                    format!(
                        "its uncompressed content does not match the image config's diff id \
                         (expected {}, got {})",
                        plan.diff_id, layer.diff_id
                    ),
                ));
            }
            seen.insert(&plan.diff_id);
            staged.push(layer);
            progress(ImportProgress::LayerDone {
                index,
                reused: false,
            });
        }
        // Everything verified: move the new layers into place.
        for layer in staged {
            store.commit(layer)?;
        }
        Ok(plans.iter().map(|p| p.diff_id.clone()).collect())
    }

    /// Re-reads a layer blob and, if its digest is not the expected one, returns that error.
    fn digest_diagnosis(&self, plan: &LayerPlan, what: &str) -> Option<ImageError> {
        let expected = plan.blob_digest.as_ref()?;
        let (reader, _) = self.src.open(&plan.rel, self.image).ok()??;
        let (got, _, _) = HashReader::new(reader).finish().ok()?;
        (got != *expected).then(|| {
            self.corrupt(
                what,
                format!("digest mismatch (expected {expected}, got {got})"),
            )
        })
    }
}

fn check_size_digest(
    ctx: &Ctx<'_>,
    what: &str,
    expected_size: u64,
    expected_digest: &str,
    size: u64,
    digest: &str,
) -> Result<(), ImageError> {
    if size != expected_size {
        return Err(ctx.corrupt(
            what,
            format!(
                "size mismatch (the descriptor says {expected_size} bytes, the blob has {size})"
            ),
        ));
    }
    if digest != expected_digest {
        return Err(ctx.corrupt(
            what,
            format!("digest mismatch (expected {expected_digest}, got {digest})"),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct CanonicalDockerEntry<'a> {
    config: &'a str,
    repo_tags: &'a [String],
    layers: &'a [String],
}

fn names_of(desc: &Descriptor) -> Vec<String> {
    let Some(ann) = desc.annotations() else {
        return Vec::new();
    };
    [REF_NAME, CONTAINERD_NAME]
        .iter()
        .filter_map(|k| ann.get(*k).cloned())
        .collect()
}

fn list_or_none(mut names: Vec<String>) -> String {
    names.sort();
    names.dedup();
    if names.is_empty() {
        "no named images".to_owned()
    } else {
        names.join(", ")
    }
}

/// The digest hex a file name carries: `blobs/sha256/<hex>` or legacy `<hex>.json`.
fn digest_in_name(rel: &str) -> Option<&str> {
    if let Some(hex) = rel.strip_prefix("blobs/sha256/") {
        return is_sha256_hex(hex).then_some(hex);
    }
    rel.strip_suffix(".json").filter(|h| is_sha256_hex(h))
}

/// "os/arch" of this host in OCI terms.
fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

/// Whether an image name from the source matches a requested reference: exactly, or after
/// normalizing Docker Hub shorthands (`busybox` = `docker.io/library/busybox:latest`).
fn ref_matches(candidate: &str, wanted: &str) -> bool {
    candidate == wanted || normalize_ref(candidate) == normalize_ref(wanted)
}

fn normalize_ref(r: &str) -> String {
    let r = r.trim();
    let mut name = r.strip_prefix("docker.io/").unwrap_or(r).to_owned();
    if let Some(rest) = name.strip_prefix("library/") {
        name = rest.to_owned();
    }
    let last = name.rsplit('/').next().unwrap_or("");
    if !last.contains(':') && !last.contains('@') {
        name.push_str(":latest");
    }
    name
}

pub(crate) fn image_config(config: &ImageConfiguration) -> ImageConfig {
    let Some(c) = config.config() else {
        return ImageConfig::default();
    };
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    ImageConfig {
        env: c.env().clone().unwrap_or_default(),
        working_dir: non_empty(c.working_dir()),
        user: non_empty(c.user()),
        entrypoint: c.entrypoint().clone(),
        cmd: c.cmd().clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_docker_hub_names() {
        assert!(ref_matches("docker.io/library/busybox:latest", "busybox"));
        assert!(ref_matches("busybox:latest", "busybox"));
        assert!(ref_matches("latest", "latest"));
        assert!(!ref_matches("busybox:1.36", "busybox"));
        assert!(!ref_matches("quay.io/x/y:1", "x/y:1"));
        assert!(ref_matches(
            "localhost:5000/app",
            "localhost:5000/app:latest"
        ));
    }

    #[test]
    fn digests_in_file_names() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_in_name(&format!("blobs/sha256/{hex}")),
            Some(hex.as_str())
        );
        assert_eq!(digest_in_name(&format!("{hex}.json")), Some(hex.as_str()));
        assert_eq!(digest_in_name("abc/layer.tar"), None);
    }
}
