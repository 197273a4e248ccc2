//! The listening connection: notifications of changes to this PoP's tunnels
//! (`NOTIFY broker_tunnels, '<pop> <id> <generation>'`, sent by the schema's triggers).
use std::time::Duration;

use postgres::Config;
use tokio::sync::mpsc::UnboundedSender;

use super::{Tls, RECONNECT_EVERY};
use crate::store::{Heard, Notified};

/// The channel the triggers notify on.
pub(super) const CHANNEL: &str = "broker_tunnels";

/// How long one wait for a notification lasts: how soon a dropped receiver or a closed
/// connection is noticed.
const WAIT: Duration = Duration::from_millis(500);

/// A notification's payload, if it is about PoP `pop`'s tunnels.
pub(super) fn parse(payload: &str, pop: &str) -> Option<Notified> {
    let mut words = payload.split(' ');
    if words.next()? != pop {
        return None;
    }
    let id = words.next()?.parse().ok()?;
    let generation = words.next()?.parse().ok()?;
    words
        .next()
        .is_none()
        .then_some(Notified { id, generation })
}

/// Connects, listens and hands over what it hears, connecting again when the connection
/// breaks; returns once nobody receives.
pub(super) fn run(config: &Config, tls: &Tls, pop: &str, tx: &UnboundedSender<Heard>) {
    while !tx.is_closed() {
        let mut client = match tls.connect(config) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %crate::broker::error_chain(&e), "listener: the store is still away");
                std::thread::sleep(RECONNECT_EVERY);
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
            tracing::warn!(error = %crate::broker::error_chain(&e), "listener: LISTEN failed");
            std::thread::sleep(RECONNECT_EVERY);
            continue;
        }
        tracing::info!("listening for changes made on other PoPs");
        if tx.send(Heard::Listening).is_err() {
            return;
        }
        use postgres::fallible_iterator::FallibleIterator;
        'connected: loop {
            {
                let mut notifications = client.notifications();
                let mut waiting = notifications.timeout_iter(WAIT);
                loop {
                    match waiting.next() {
                        Ok(Some(n)) => {
                            if let Some(change) = parse(n.payload(), pop) {
                                if tx.send(Heard::Changed(change)).is_err() {
                                    return;
                                }
                            }
                        }
                        // Nothing within WAIT, or the connection closed.
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %crate::broker::error_chain(&e), "listener: the connection broke");
                            break 'connected;
                        }
                    }
                }
            }
            if client.is_closed() {
                tracing::warn!("listener: the connection closed");
                break;
            }
            if tx.is_closed() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_read_for_this_pop_only() {
        assert_eq!(
            parse("fra1 42 7", "fra1"),
            Some(Notified {
                id: 42,
                generation: 7
            })
        );
        assert_eq!(parse("ams1 42 7", "fra1"), None);
        assert_eq!(parse("fra1 42", "fra1"), None);
        assert_eq!(parse("fra1 x 7", "fra1"), None);
        assert_eq!(parse("fra1 42 7 9", "fra1"), None);
        assert_eq!(parse("", "fra1"), None);
    }
}
