//! Webhooks: who may manage them, what a valid one is, and the rules that
//! keep a webhook URL from reaching what it should not (server-side request
//! forgery). The sending itself is `crate::webhooks`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::WebhooksConfig;
use crate::error::{Error, Result};
use crate::model::{DeliveryAttempt, OrgId, Webhook};
use crate::store::{Read, webhooks as stored};

use super::{Domain, Principal};

/// Every event type the log writes; `eventTypes` names these, a family of
/// them (`room.*`) or `*`.
pub const EVENT_TYPES: &[&str] = &[
    "organization.created",
    "organization.renamed",
    "organization.deleted",
    "member.added",
    "member.role_changed",
    "member.removed",
    "user.created",
    "user.updated",
    "user.deactivated",
    "token.issued",
    "token.revoked",
    "room.created",
    "room.updated",
    "room.members_changed",
    "room.claimed",
    "room.ready",
    "room.sync_failed",
    "room.deleted",
];
/// Longest webhook URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Webhooks in one page of `GET /v1/webhooks`, at most.
pub const MAX_PAGE: usize = 100;
/// Delivery attempts shown with a webhook.
pub const SHOWN_DELIVERIES: usize = 20;

/// What a PUT asks for.
#[derive(Debug, Clone)]
pub struct WebhookSpec {
    pub url: String,
    pub event_types: Vec<String>,
    pub org_id: Option<i64>,
}

/// A webhook as created: the only time its secret is shown.
pub struct Created {
    pub webhook: Webhook,
    /// `whsec_…`, when the PUT created the webhook or a rotation made a new one.
    pub secret: Option<String>,
    pub created: bool,
}

/// Never shows the secret.
impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("webhook", &self.webhook.id)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// Checks a webhook id from the path.
///
/// # Errors
/// 422 naming the rule.
pub fn check_id(id: &str) -> Result<()> {
    // A letter or digit first: `.` and `..` are no path segments a client can send.
    let ok = (1..=64).contains(&id.len())
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "webhookID",
            "must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
        ))
    }
}

/// Whether `kind` is wanted by a list of `eventTypes`.
#[must_use]
pub fn wants(types: &[String], kind: &str) -> bool {
    types.iter().any(|t| {
        t == "*"
            || t == kind
            || t.strip_suffix(".*").is_some_and(|family| kind.split_once('.').is_some_and(|(f, _)| f == family))
    })
}

fn check_event_types(types: &[String]) -> Result<Vec<String>> {
    if types.is_empty() {
        return Err(Error::invalid("eventTypes", "must name at least one event type (or \"*\" for all)"));
    }
    if types.len() > 64 {
        return Err(Error::invalid("eventTypes", format!("must name at most 64 types, got {}", types.len())));
    }
    let families: Vec<&str> = EVENT_TYPES.iter().filter_map(|t| t.split_once('.').map(|(f, _)| f)).collect();
    for t in types {
        let known = t == "*"
            || EVENT_TYPES.contains(&t.as_str())
            || t.strip_suffix(".*").is_some_and(|f| families.contains(&f));
        if !known {
            return Err(Error::invalid(
                "eventTypes",
                format!(
                    "names {t:?}, which is no event type: use one of {}, a family such as \"room.*\", or \"*\"",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
    }
    let mut out = types.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Why an address may not be a webhook's: `None` when it may.
#[must_use]
pub fn refused_address(ip: IpAddr, config: &WebhooksConfig) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    if ip.is_loopback() {
        return (!config.allow_loopback)
            .then_some("is a loopback address, refused unless webhooks.allow_loopback = true");
    }
    if ip.is_unspecified() || ip.is_multicast() || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        return Some("is an unspecified, multicast or broadcast address, never a receiver");
    }
    let private = match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => private_v6(v6),
    };
    (private && !config.allow_private)
        .then_some("is a private, shared, link-local or reserved address, refused unless webhooks.allow_private = true")
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_private()
        || ip.is_link_local()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
        || ip.is_documentation()
}

fn private_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: an IPv4 address behind it
        || (s[0] == 0x2002) // 6to4: an IPv4 address inside
        || (s[0] == 0x2001 && s[1] == 0) // Teredo
        || s[..6].iter().all(|&x| x == 0) // IPv4-compatible (::a.b.c.d, deprecated): an IPv4 address inside
}

/// A checked URL: what the sender connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as the `Host` header.
    pub authority: String,
    pub path_and_query: String,
}

/// Checks a webhook URL against the rules that do not need DNS; the
/// sender checks every address a name resolves to before connecting.
///
/// # Errors
/// 422 naming the rule broken.
pub fn check_url(url: &str, config: &WebhooksConfig) -> Result<Target> {
    let bad = |why: String| Error::invalid("url", why);
    if url.len() > MAX_URL_LEN {
        return Err(bad(format!("must be at most {MAX_URL_LEN} characters, got {}", url.len())));
    }
    let uri: http::Uri =
        url.parse().map_err(|_| bad(format!("{url:?} is not a URL: give an absolute https:// URL")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("must be an http:// or https:// URL (the scheme rule)".into())),
    };
    let authority = uri.authority().ok_or_else(|| bad("must name a host".into()))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not carry a user name or password before the host".into()));
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    if host.is_empty() {
        return Err(bad("must name a host".into()));
    }
    if let Some((_, zone)) = host.split_once('%') {
        // `[fe80::1%eth0]` (or `%25eth0`) names an interface of this host,
        // which no address rule can judge: never a receiver's address.
        return Err(bad(if authority.host().starts_with('[') {
            format!(
                "names the address {host} with a zone id (%{zone}): an address tied to a network interface is \
                 never a webhook receiver; give a host name or an address without the zone"
            )
        } else {
            format!("names the host {host:?}, which is not a DNS name (no % in a host name)")
        }));
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let ip: Option<IpAddr> = host.parse().ok();
    let loopback_name = host == "localhost" || host.ends_with(".localhost");
    if let Some(ip) = ip
        && let Some(why) = refused_address(ip, config)
    {
        return Err(bad(format!("names {ip}, which {why}")));
    }
    if loopback_name && !config.allow_loopback {
        return Err(bad(format!("names {host}, a loopback host, refused unless webhooks.allow_loopback = true")));
    }
    let loopback = loopback_name || ip.is_some_and(|i| i.is_loopback());
    if !https && !loopback && !config.allow_http {
        return Err(
            bad("must be https:// (plain http:// only to loopback, or with webhooks.allow_http = true)".into()),
        );
    }
    let path_and_query = uri.path_and_query().map_or("/".to_string(), ToString::to_string);
    Ok(Target { https, host, port, authority: authority.as_str().to_string(), path_and_query })
}

impl Domain {
    /// Creates or replaces a webhook. A new one gets a secret (shown once)
    /// and starts after the last event now; a replaced one keeps its secret
    /// and its cursor (nothing is skipped), and a failing one is sent to again.
    ///
    /// # Errors
    /// 403 a PAT; 422 a bad id, URL, event type or organization id, or one
    /// webhook too many; 404 an unknown organization.
    pub fn put_webhook(&self, p: Principal, id: &str, spec: WebhookSpec) -> Result<Created> {
        Self::require_api(p)?;
        check_id(id)?;
        check_url(&spec.url, &self.config.webhooks)?;
        let event_types = check_event_types(&spec.event_types)?;
        let org_id: Option<OrgId> = spec.org_id.map(|o| super::positive("organizationID", o)).transpose()?;
        let now = self.clock.now();
        let out = self.write(|w| {
            if let Some(o) = org_id {
                w.org(o)?.ok_or_else(|| super::org_not_found(o))?;
            }
            let old = stored::webhook(w, id)?;
            let (hook, secret) = match old {
                Some(old) => (
                    Webhook {
                        url: spec.url.clone(),
                        event_types,
                        org_id,
                        updated_at: now,
                        generation: old.generation + 1,
                        failing_since: None,
                        failing: false,
                        ..old
                    },
                    None,
                ),
                None => {
                    let max = u64::from(self.config.webhooks.max_webhooks);
                    if stored::webhook_count(w)? >= max {
                        return Err(Error::invalid(
                            "webhookID",
                            format!(
                                "would be webhook {} of at most {max} (webhooks.max_webhooks): delete one first",
                                max + 1
                            ),
                        ));
                    }
                    let secret = crate::secrets::new_webhook_secret();
                    let hook = Webhook {
                        id: id.to_string(),
                        url: spec.url.clone(),
                        event_types,
                        org_id,
                        sealed_secret: self.key.seal_webhook_secret(id, &secret),
                        created_at: now,
                        updated_at: now,
                        generation: 1,
                        cursor: w.last_event_id()?,
                        failing_since: None,
                        failing: false,
                    };
                    (hook, Some(crate::secrets::webhook_secret_text(&secret)))
                }
            };
            w.put_webhook(&hook)?;
            Ok(Created { created: secret.is_some(), webhook: hook, secret })
        })?;
        self.webhooks_changed.notify_one();
        Ok(out)
    }

    /// Gives a webhook a new secret, shown only in this answer; the old one
    /// signs nothing from now on.
    ///
    /// # Errors
    /// 403 a PAT; 404 no such webhook.
    pub fn rotate_webhook_secret(&self, p: Principal, id: &str) -> Result<Created> {
        Self::require_api(p)?;
        check_id(id)?;
        let now = self.clock.now();
        let out = self.write(|w| {
            let old = stored::webhook(w, id)?.ok_or_else(|| not_found(id))?;
            let secret = crate::secrets::new_webhook_secret();
            let hook = Webhook {
                sealed_secret: self.key.seal_webhook_secret(id, &secret),
                updated_at: now,
                generation: old.generation + 1,
                ..old
            };
            w.put_webhook(&hook)?;
            Ok(Created { webhook: hook, secret: Some(crate::secrets::webhook_secret_text(&secret)), created: false })
        })?;
        self.webhooks_changed.notify_one();
        Ok(out)
    }

    /// One webhook and its latest delivery attempts (newest first).
    ///
    /// # Errors
    /// 403 a PAT; 404 no such webhook.
    pub fn webhook(&self, r: &impl Read, p: Principal, id: &str) -> Result<(Webhook, Vec<DeliveryAttempt>)> {
        Self::require_api(p)?;
        check_id(id)?;
        let hook = stored::webhook(r, id)?.ok_or_else(|| not_found(id))?;
        Ok((hook, stored::deliveries(r, id, SHOWN_DELIVERIES)?))
    }

    /// A page of webhooks in id order, after the id `after`.
    ///
    /// # Errors
    /// 403 a PAT.
    pub fn webhooks(&self, r: &impl Read, p: Principal, after: Option<&str>, limit: usize) -> Result<Vec<Webhook>> {
        Self::require_api(p)?;
        Ok(stored::webhooks(r, after, limit.clamp(1, MAX_PAGE))?)
    }

    /// Deletes a webhook and its delivery log; nothing more is sent to it.
    ///
    /// # Errors
    /// 403 a PAT; 404 no such webhook.
    pub fn delete_webhook(&self, p: Principal, id: &str) -> Result<()> {
        Self::require_api(p)?;
        check_id(id)?;
        let existed = self.write(|w| Ok(w.delete_webhook(id)?))?;
        self.webhooks_changed.notify_one();
        if existed { Ok(()) } else { Err(not_found(id)) }
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no webhook {id:?}: create it with PUT /v1/webhooks/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> WebhooksConfig {
        WebhooksConfig::default()
    }

    #[test]
    fn urls_follow_the_rules() {
        let c = cfg();
        assert!(check_url("https://hooks.example.com/in?x=1", &c).is_ok());
        for (url, rule) in [
            ("ftp://example.com/", "scheme"),
            ("http://example.com/", "https://"),
            ("https://10.0.0.1/", "private"),
            ("https://169.254.169.254/latest", "link-local"),
            ("https://[fe80::1]/", "link-local"),
            ("https://[::ffff:192.168.1.1]/", "private"),
            ("https://[::127.0.0.1]/", "private"),
            ("https://[::a9fe:a9fe]/", "private"),
            ("https://127.0.0.1:9/", "allow_loopback"),
            ("https://localhost/", "allow_loopback"),
            ("https://0.0.0.0/", "unspecified"),
            ("https://user:pw@example.com/", "user name"),
            ("https://[::1%lo]/", "zone id"),
            ("https://[fe80::1%25eth0]/", "zone id"),
            ("https://[fd00::2%eth0]:8443/x", "zone id"),
        ] {
            let e = check_url(url, &c).unwrap_err().to_string();
            assert!(e.contains(rule), "{url}: {e}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(check_url(&long, &c).unwrap_err().to_string().contains("2048"));
        let open = WebhooksConfig { allow_loopback: true, allow_private: true, allow_http: false, ..cfg() };
        assert!(check_url("http://127.0.0.1:8080/hook", &open).is_ok(), "http to loopback");
        assert!(check_url("https://10.0.0.1/", &open).is_ok());
        assert!(check_url("http://10.0.0.1/", &open).is_err(), "http elsewhere needs allow_http");
    }

    fn domain(config: crate::config::Config) -> (tempfile::TempDir, Domain) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("db.redb"), 1 << 20).unwrap();
        let clock = std::sync::Arc::new(crate::domain::ManualClock::new(1_800_000_000));
        let key = crate::secrets::ServerKey::from_bytes([5; 32]);
        (dir, Domain::new(store, std::sync::Arc::new(config), key, clock).unwrap())
    }

    fn spec() -> WebhookSpec {
        WebhookSpec { url: "https://hooks.example.com/in".into(), event_types: vec!["*".into()], org_id: None }
    }

    /// `webhooks.max_webhooks` bounds how many exist; a replacing PUT keeps
    /// the secret and the cursor and clears `failing`; a PAT may do nothing.
    #[test]
    fn webhooks_are_bounded_and_replacing_keeps_the_secret() {
        let mut config = crate::config::Config::default();
        config.webhooks.max_webhooks = 2;
        let (_dir, d) = domain(config);
        let api = Principal::COMMAND_LINE;
        let a = d.put_webhook(api, "a", spec()).unwrap();
        assert!(a.created && a.secret.as_deref().is_some_and(|s| s.starts_with("whsec_")));
        d.put_webhook(api, "b", spec()).unwrap();
        let third = d.put_webhook(api, "c", spec()).unwrap_err().to_string();
        assert!(third.contains("webhooks.max_webhooks"), "{third}");
        d.write(|w| {
            let mut h = stored::webhook(w, "a")?.unwrap();
            (h.cursor, h.failing, h.failing_since) = (42, true, Some(1));
            w.put_webhook(&h)?;
            Ok(())
        })
        .unwrap();
        let again = d.put_webhook(api, "a", spec()).unwrap();
        assert!(!again.created && again.secret.is_none());
        let h = again.webhook;
        assert_eq!((h.cursor, h.failing, h.failing_since, h.generation), (42, false, None, 2));
        assert_eq!(h.sealed_secret, a.webhook.sealed_secret, "the secret is kept");
        let rotated = d.rotate_webhook_secret(api, "a").unwrap();
        assert_ne!(rotated.secret, a.secret);
        assert_eq!(rotated.webhook.generation, 3);
        let pat = Principal::User(7);
        assert!(matches!(d.put_webhook(pat, "x", spec()), Err(Error::Forbidden(_))));
        assert!(matches!(d.delete_webhook(pat, "a"), Err(Error::Forbidden(_))));
        d.delete_webhook(api, "b").unwrap();
        assert!(matches!(d.delete_webhook(api, "b"), Err(Error::NotFound(_))));
        d.put_webhook(api, "c", spec()).unwrap();
    }

    /// The delivery log keeps the newest `webhooks.delivery_log_size`
    /// attempts, newest first, and goes with its webhook.
    #[test]
    fn the_delivery_log_is_bounded() {
        let (_dir, d) = domain(crate::config::Config::default());
        d.put_webhook(Principal::COMMAND_LINE, "a", spec()).unwrap();
        d.write(|w| {
            for event_id in 1..=8 {
                let a = DeliveryAttempt { event_id, time: 1, status: Some(500), error: None, latency_ms: 3 };
                w.log_delivery("a", &a, 5)?;
            }
            Ok(())
        })
        .unwrap();
        let r = d.store.read().unwrap();
        let kept: Vec<u64> = stored::deliveries(&r, "a", 100).unwrap().iter().map(|a| a.event_id).collect();
        assert_eq!(kept, vec![8, 7, 6, 5, 4]);
        drop(r);
        d.delete_webhook(Principal::COMMAND_LINE, "a").unwrap();
        assert!(stored::deliveries(&d.store.read().unwrap(), "a", 100).unwrap().is_empty());
    }

    #[test]
    fn event_types_and_families() {
        let types = check_event_types(&["room.*".into(), "token.issued".into()]).unwrap();
        assert!(wants(&types, "room.ready") && wants(&types, "token.issued"));
        assert!(!wants(&types, "token.revoked") && !wants(&types, "roomx.ready"));
        assert!(wants(&["*".to_string()], "user.created"));
        assert!(check_event_types(&["room.nope".into()]).unwrap_err().to_string().contains("room.nope"));
        assert!(check_event_types(&["nope.*".into()]).is_err());
        assert!(check_event_types(&[]).is_err());
    }
}
