//! Pulling images from registries into the server's layer store, for templates (`POST
//! /hutch/v1/templates/pull`) and for builds (`FROM registry/name:tag`).

use http::StatusCode;
use hutch_image::{ImageError, ImportedImage, PullOptions, PullProgress, RegistryAuth};

use crate::error::ApiError;
use crate::state::AppState;

/// Pulls `reference` into the layer store, with the server's insecure registries and, without
/// `auth`, the credentials of the server host's Docker config file (if any).
///
/// The caller holds `st.layers_lock` for reading from before the pull until a template refers
/// to the layers, so that a template removal does not collect them in between.
///
/// Errors: 404 for an unknown image or tag, 403 when the registry refuses access, 502 when
/// it cannot be reached or fails, 400 for an invalid reference or an image that cannot be
/// used, 500 for local failures; each message names the image and the registry.
pub(crate) async fn pull_template_base(
    st: &AppState,
    reference: &str,
    auth: RegistryAuth,
    progress: &mut (dyn FnMut(PullProgress) + Send),
) -> Result<ImportedImage, ApiError> {
    let opts = PullOptions {
        auth,
        insecure_registries: st.insecure_registries.clone(),
        docker_config: None,
    };
    hutch_image::pull(&st.store, reference, &opts, progress)
        .await
        .map_err(|e| pull_error(reference, e))
}

fn pull_error(reference: &str, e: ImageError) -> ApiError {
    let status = match &e {
        ImageError::RegistryNotFound { .. } => StatusCode::NOT_FOUND,
        ImageError::RegistryAuth { .. } => StatusCode::FORBIDDEN,
        ImageError::RegistryUnreachable { .. } | ImageError::Registry { .. } => {
            StatusCode::BAD_GATEWAY
        }
        ImageError::Io { .. } | ImageError::Extract { .. } => {
            return ApiError::internal(format!("cannot pull {reference}: {e}"));
        }
        _ => StatusCode::BAD_REQUEST,
    };
    // The other errors name the image and the registry themselves.
    ApiError::new(status, e.to_string())
}
