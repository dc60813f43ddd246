//! The W3C trace context (`traceparent`) across the node API, so that a
//! create's spans on the node belong to the control plane's trace of it.
//! Without traces configured ([`opentelemetry::global`]'s propagator is the
//! no-op default), nothing is sent and nothing is read.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// The current span's context, as headers for a request to a node.
pub(crate) fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Inject(&mut headers))
    });
    headers
}

/// Makes `span` a child of the span a request's headers name, if any.
pub(crate) fn continue_in(span: &tracing::Span, headers: &HeaderMap) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extract(headers)));
    let _ = span.set_parent(cx);
}
