//! Spans recorded in memory through the apps' own subscriber, for tests of what a trace holds.

use std::sync::{Arc, LazyLock, Mutex};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use tracing::{
    Dispatch,
    subscriber::{DefaultGuard, NoSubscriber},
};

use crate::config::LogFormat;

#[derive(Debug, Clone, Default)]
struct Memory(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Memory {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(batch);
        Ok(())
    }
}

/// The spans ended so far on this thread's subscriber (see [`record`]).
pub(crate) struct Recorded {
    spans: Memory,
    _provider: SdkTracerProvider,
}

/// Makes the apps' subscriber, with an OpenTelemetry layer exporting to memory, this thread's
/// default until the guard drops.
pub(crate) fn record() -> (DefaultGuard, Recorded) {
    // tracing caches whether a call site is enabled. With one thread-local subscriber alive it
    // asks whichever thread gets there first (another test's, with no OpenTelemetry layer);
    // with two or more it asks all of them. A second one, kept alive, makes the answer hold.
    static SECOND: LazyLock<Dispatch> = LazyLock::new(|| Dispatch::new(NoSubscriber::default()));
    LazyLock::force(&SECOND);
    let spans = Memory::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let subscriber = super::subscriber(
        LogFormat::Text,
        std::io::sink,
        Some(provider.tracer("test")),
    );
    let guard = tracing::subscriber::set_default(subscriber);
    super::spans::TEST_EXPORTED.with(|exported| exported.set(true));
    let recorded = Recorded {
        spans,
        _provider: provider,
    };
    (guard, recorded)
}

impl Recorded {
    pub(crate) fn spans(&self) -> Vec<SpanData> {
        self.spans
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The ended spans named `name`.
    pub(crate) fn named(&self, name: &str) -> Vec<SpanData> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }

    /// The one ended span named `name`.
    pub(crate) fn one(&self, name: &str) -> SpanData {
        let mut named = self.named(name);
        assert_eq!(named.len(), 1, "one {name:?} in {}", self.outline());
        named.remove(0)
    }

    /// `name (span id) <- parent id`, one per line: for failure messages.
    pub(crate) fn outline(&self) -> String {
        self.spans()
            .iter()
            .map(|s| {
                format!(
                    "{} ({}) <- {}",
                    s.name,
                    s.span_context.span_id(),
                    s.parent_span_id
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
