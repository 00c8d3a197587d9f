//! What `GET /healthz` reports: the replication stream's state, its
//! position and lag, the number of clients and the last error.

use std::sync::Mutex;
use walcast_format::Lsn;

/// The replication stream's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Starting,
    Streaming,
    /// A transient error: reconnecting with backoff from the confirmed position.
    Reconnecting,
    /// A definite error: streaming stopped until the problem is fixed and the proxy restarted.
    Failed,
    /// An edge lost its JetStream stream: clients stay connected and get
    /// what follows once it is back.
    Degraded,
}

#[derive(Debug, Clone)]
struct Inner {
    state: State,
    last_error: Option<String>,
    confirmed: Lsn,
    received: Lsn,
}

/// Shared health record.
#[derive(Debug)]
pub struct Health {
    /// The slot read (empty on an edge).
    pub slot: String,
    /// On an edge: the JetStream stream read instead of a slot.
    pub nats_stream: Option<String>,
    inner: Mutex<Inner>,
}

impl Health {
    /// A record for an edge reading the JetStream stream `stream`, starting.
    pub fn edge(stream: &str) -> Health {
        Health {
            nats_stream: Some(stream.to_owned()),
            ..Health::new("")
        }
    }

    /// A record for `slot`, starting.
    pub fn new(slot: &str) -> Health {
        Health {
            slot: slot.to_owned(),
            nats_stream: None,
            inner: Mutex::new(Inner {
                state: State::Starting,
                last_error: None,
                confirmed: Lsn(0),
                received: Lsn(0),
            }),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Inner)) {
        {
            let mut i = crate::locks::lock(&self.inner);
            f(&mut i);
        }
    }

    /// The stream is running.
    pub fn streaming(&self) {
        self.update(|i| i.state = State::Streaming);
    }

    /// A transient error happened; reconnecting.
    pub fn reconnecting(&self, error: &str) {
        self.update(|i| {
            i.state = State::Reconnecting;
            i.last_error = Some(error.to_owned());
        });
    }

    /// An edge lost its JetStream stream and is getting it back.
    pub fn degraded(&self, error: &str) {
        self.update(|i| {
            i.state = State::Degraded;
            i.last_error = Some(error.to_owned());
        });
    }

    /// A definite error stopped streaming.
    pub fn failed(&self, error: &str) {
        self.update(|i| {
            i.state = State::Failed;
            i.last_error = Some(error.to_owned());
        });
    }

    /// Records positions.
    pub fn positions(&self, confirmed: Lsn, received: Lsn) {
        self.update(|i| {
            i.confirmed = confirmed;
            i.received = received;
        });
    }

    /// The `/healthz` body and whether the proxy is healthy.
    pub fn report(&self, clients: usize) -> (bool, serde_json::Value) {
        let i = crate::locks::lock(&self.inner).clone();
        let status = match i.state {
            State::Starting => "starting",
            State::Streaming => "ok",
            State::Reconnecting => "reconnecting",
            State::Failed => "failed",
            State::Degraded => "degraded",
        };
        let mut body = serde_json::json!({
            "status": status,
            "slot": (!self.slot.is_empty()).then_some(&self.slot),
            "confirmed_lsn": i.confirmed.to_string(),
            "received_lsn": i.received.to_string(),
            "lag_bytes": i.received.0.saturating_sub(i.confirmed.0),
            "clients": clients,
            "last_error": i.last_error,
        });
        if let Some(stream) = &self.nats_stream {
            body["nats_stream"] = serde_json::json!(stream);
        }
        (i.state == State::Streaming, body)
    }
}
