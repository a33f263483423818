//! Webhooks and their delivery logs (schema 2).

use redb::ReadableTable;

use super::tables::{WEBHOOKID_WEBHOOK, WEBHOOKIDSEQ_DELIVERY};
use super::{Read, StoreError, Writer, codec, decode_at};
use crate::model::{DeliveryAttempt, Webhook};

/// `name_counter` key of the last delivery attempt number.
const DELIVERY_COUNTER: &str = "delivery";

/// One webhook.
///
/// # Errors
/// Storage failures, an undecodable record.
pub fn webhook(r: &impl Read, id: &str) -> Result<Option<Webhook>, StoreError> {
    let t = r.table(WEBHOOKID_WEBHOOK)?;
    t.get(id)?.map(|v| decode_at("webhookid_webhook", id, v.value())).transpose()
}

/// At most `limit` webhooks with ids after `after` (all from the first
/// with `None`), in id order.
///
/// # Errors
/// Storage failures, an undecodable record.
pub fn webhooks(r: &impl Read, after: Option<&str>, limit: usize) -> Result<Vec<Webhook>, StoreError> {
    let t = r.table(WEBHOOKID_WEBHOOK)?;
    let mut out = Vec::new();
    let range = match after {
        Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?,
        None => t.range::<&str>(..)?,
    };
    for entry in range.take(limit) {
        let (k, v) = entry?;
        out.push(decode_at("webhookid_webhook", k.value(), v.value())?);
    }
    Ok(out)
}

/// How many webhooks exist.
///
/// # Errors
/// Storage failures.
pub fn webhook_count(r: &impl Read) -> Result<u64, StoreError> {
    use redb::ReadableTableMetadata;
    Ok(r.table(WEBHOOKID_WEBHOOK)?.len()?)
}

/// A webhook's latest delivery attempts, newest first, at most `limit`.
///
/// # Errors
/// Storage failures, an undecodable record.
pub fn deliveries(r: &impl Read, id: &str, limit: usize) -> Result<Vec<DeliveryAttempt>, StoreError> {
    let t = r.table(WEBHOOKIDSEQ_DELIVERY)?;
    let mut out = Vec::new();
    for entry in t.range((id, 0)..=(id, u64::MAX))?.rev().take(limit) {
        let (k, v) = entry?;
        out.push(decode_at("webhookidseq_delivery", k.value().1, v.value())?);
    }
    Ok(out)
}

impl Writer {
    /// Writes a webhook.
    pub fn put_webhook(&mut self, hook: &Webhook) -> Result<(), StoreError> {
        self.txn.open_table(WEBHOOKID_WEBHOOK)?.insert(hook.id.as_str(), codec::encode(hook).as_slice())?;
        Ok(())
    }

    /// Removes a webhook and its delivery log; whether it existed.
    pub fn delete_webhook(&mut self, id: &str) -> Result<bool, StoreError> {
        let existed = self.txn.open_table(WEBHOOKID_WEBHOOK)?.remove(id)?.is_some();
        let mut log = self.txn.open_table(WEBHOOKIDSEQ_DELIVERY)?;
        let keys: Vec<u64> =
            log.range((id, 0)..=(id, u64::MAX))?.map(|e| e.map(|(k, _)| k.value().1)).collect::<Result<_, _>>()?;
        for seq in keys {
            log.remove((id, seq))?;
        }
        Ok(existed)
    }

    /// Appends a delivery attempt to a webhook's log and drops the oldest
    /// beyond `keep`.
    pub fn log_delivery(&mut self, id: &str, attempt: &DeliveryAttempt, keep: usize) -> Result<(), StoreError> {
        let seq = self.next_id(DELIVERY_COUNTER)?;
        self.put_delivery(id, seq, attempt)?;
        let mut log = self.txn.open_table(WEBHOOKIDSEQ_DELIVERY)?;
        let held: Vec<u64> =
            log.range((id, 0)..=(id, u64::MAX))?.map(|e| e.map(|(k, _)| k.value().1)).collect::<Result<_, _>>()?;
        for seq in held.iter().take(held.len().saturating_sub(keep)) {
            log.remove((id, *seq))?;
        }
        Ok(())
    }

    /// Writes one delivery attempt under its number (also for an import).
    pub fn put_delivery(&mut self, id: &str, seq: u64, attempt: &DeliveryAttempt) -> Result<(), StoreError> {
        self.txn.open_table(WEBHOOKIDSEQ_DELIVERY)?.insert((id, seq), codec::encode(attempt).as_slice())?;
        Ok(())
    }
}
