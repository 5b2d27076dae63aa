//! The `/v1/` endpoints (`openapi.json` is their reference):
//!
//! - `GET /v1/kv/{key}`: the value's raw bytes, its metadata in `X-Corekv-*` headers;
//!   `?format=json` for JSON (`value` when UTF-8, else `value_b64`); `?stale` from any
//!   replica. `?prefix`: a page of the keys under the path (`limit`, `page`, `keys_only`).
//! - `PUT /v1/kv/{key}`: the body is the value; `?cas=MOD_INDEX` (0: only if missing),
//!   `?ttl=30s` or `?lease=ID`.
//! - `DELETE /v1/kv/{key}`: `?cas=MOD_INDEX`; `?prefix` deletes every key under the path.
//! - `POST /v1/txn`: a transaction in `corekvctl txn`'s JSON form.
//! - `POST /v1/lease?ttl=30s&key=K` (or `&shard=N`), `GET /v1/lease/{id}`,
//!   `POST /v1/lease/{id}/keepalive`, `DELETE /v1/lease/{id}`.
//! - `GET /v1/watch/{key}` ([`crate::watch`]).
//!
//! Keys in paths are percent-decoded to bytes, so any key is reachable (`%00`...). A bearer
//! token (`Authorization: Bearer T`) is passed to the nodes, which check the user's rights;
//! so is the user of a client certificate the gateway verified (`--client-ca`): the gateway
//! acts for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine;
use corekv_client::text::{parse_duration, parse_txn};
use corekv_client::{
    Client, Compare, Consistency, KeyMeta, KeyValue, LeaseId, ReadOptions, ScanOptions, ScanRange,
    ShardId, Txn, TxnOp, TxnOpResult, WriteOptions,
};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::OwnedSemaphorePermit;

use corekv_proto::constants::VALUE_BYTES_MAX;

use crate::error::{ApiError, ApiResult};
use crate::metrics::ENDPOINTS;
use crate::serve::CertUser;
use crate::{Gateway, Identity};

/// The most entries one listing page returns, and the default.
pub const LIST_LIMIT_MAX: usize = 10_000;
const LIST_LIMIT_DEFAULT: usize = 1_000;

/// An over-limit body of at most this many bytes is read (and dropped) before the 413, so
/// that the caller, still sending, sees the answer.
const DRAIN_BYTES_MAX: u64 = 16 * 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Keys deleted per round of a `DELETE ?prefix`.
const DELETE_PREFIX_BATCH: usize = 1_000;

/// The HTTP API's routes over `gateway`.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/kv", any(kv))
        .route("/v1/kv/", any(kv))
        .route("/v1/kv/{*key}", any(kv))
        .route("/v1/txn", post(txn))
        .route("/v1/lease", post(lease_grant))
        .route("/v1/lease/{id}", get(lease_info).delete(lease_revoke))
        .route("/v1/lease/{id}/keepalive", post(lease_keep_alive))
        .route("/v1/watch", get(crate::watch::watch))
        .route("/v1/watch/", get(crate::watch::watch))
        .route("/v1/watch/{*key}", get(crate::watch::watch))
        .fallback(|| async { ApiError::not_found("no such endpoint (see /v1/openapi.json)") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the endpoint has no such method (see /v1/openapi.json)",
            )
        })
        .layer(middleware::from_fn_with_state(gateway.clone(), track))
        .with_state(gateway)
}

/// Counts every request and its time by endpoint and status.
async fn track(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let endpoint = endpoint_of(request.method(), request.uri());
    let started = Instant::now();
    let response = next.run(request).await;
    gateway.metrics.request(endpoint, response.status(), started.elapsed());
    response
}

/// The endpoint a request is for: its index in [`ENDPOINTS`].
fn endpoint_of(method: &Method, uri: &Uri) -> usize {
    let name = endpoint_name(method, uri);
    ENDPOINTS.iter().position(|e| *e == name).unwrap_or(ENDPOINTS.len() - 1)
}

fn endpoint_name(method: &Method, uri: &Uri) -> &'static str {
    let path = uri.path();
    // As Query::flag reads it, without decoding the query.
    let prefix = uri.query().is_some_and(|query| {
        query.split('&').any(|p| matches!(p, "prefix" | "prefix=" | "prefix=true" | "prefix=1"))
    });
    match (method, path) {
        (_, p) if p.starts_with("/v1/kv") => match (method, prefix) {
            (&Method::GET, true) => "kv_list",
            (&Method::GET, false) => "kv_get",
            (&Method::PUT, _) => "kv_put",
            (&Method::DELETE, true) => "kv_delete_prefix",
            (&Method::DELETE, false) => "kv_delete",
            _ => "other",
        },
        (_, "/v1/txn") => "txn",
        (_, p) if p.starts_with("/v1/lease") => "lease",
        (_, p) if p.starts_with("/v1/watch") => "watch",
        (_, "/health") => "health",
        (_, "/metrics") => "metrics",
        _ => "other",
    }
}

async fn health(State(gateway): State<Arc<Gateway>>) -> Response {
    if *gateway.shutdown.borrow() {
        return ApiError::unavailable("shutting down").into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], gateway.metrics.render())
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

/// `/v1/kv/{key}`: every method, told apart here (the key is the raw path, decoded to bytes).
async fn kv(
    State(gateway): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    Caller(client): Caller,
    body: Body,
) -> ApiResult<Response> {
    let key = path_key(uri.path(), "/v1/kv")?;
    let query = Query::parse(uri.query())?;
    let shard = client.shard_of(&key);
    let prefix = query.flag("prefix")?;
    match method {
        Method::HEAD if prefix => {
            Err(ApiError::bad_request("a listing has no HEAD: GET it (?prefix)"))
        }
        Method::GET if prefix => {
            query.only(&["prefix", "limit", "page", "keys_only", "stale", "format"])?;
            if !json_format(&query)? && query.get("format").is_some() {
                return Err(ApiError::bad_request("a listing is JSON: format=json or none"));
            }
            list(&client, key, &query).await
        }
        Method::GET | Method::HEAD => {
            query.only(&["stale", "format", "prefix"])?;
            let json = json_format(&query)?;
            let options = ReadOptions { consistency: consistency(&query)?, ..Default::default() };
            let entry = client.get_with(&key, options).await?;
            let entry = entry.ok_or_else(|| ApiError::not_found("the key does not exist"))?;
            let stale = options.consistency == Consistency::Stale;
            Ok(if json {
                let mut response = Json(entry_json(&entry, shard)).into_response();
                meta_headers(response.headers_mut(), &entry.meta, shard);
                response
            } else {
                value_response(entry, shard, stale)
            })
        }
        Method::PUT => {
            query.only(&["cas", "ttl", "lease"])?;
            let limit = VALUE_BYTES_MAX.min(gateway.max_body);
            let (value, _held) = read_body(&gateway, body, limit, "the value").await?;
            let options = write_options(&query)?;
            let meta = match query.number("cas")? {
                None => client.put_with(&key, &value, options).await?,
                Some(cas) => {
                    let put = match (options.ttl, options.lease) {
                        (Some(ttl), _) => TxnOp::put_with_ttl(&key, &value, ttl),
                        (None, Some(lease)) => TxnOp::put_with_lease(&key, &value, lease),
                        (None, None) => TxnOp::put(&key, &value),
                    };
                    let txn = Txn::new()
                        .when(Compare::mod_index(&key).eq(cas))
                        .and_then([put])
                        .or_else([TxnOp::get(&key)]);
                    let response = client.txn(&txn).await?;
                    match response.results.first() {
                        Some(TxnOpResult::Put(meta)) if response.succeeded => *meta,
                        Some(TxnOpResult::Get(current)) => return Err(cas_failed(cas, current)),
                        _ => return Err(unexpected_txn()),
                    }
                }
            };
            let mut response = Json(meta_json(&key, &meta, shard)).into_response();
            meta_headers(response.headers_mut(), &meta, shard);
            Ok(response)
        }
        Method::DELETE if prefix => {
            query.only(&["prefix"])?;
            let deleted = delete_prefix(&client, &key).await?;
            Ok(Json(json!({"deleted": deleted})).into_response())
        }
        Method::DELETE => {
            query.only(&["cas", "prefix"])?;
            let deleted = match query.number("cas")? {
                None => client.delete(&key).await?,
                Some(cas) => {
                    let txn = Txn::new()
                        .when(Compare::mod_index(&key).eq(cas))
                        .and_then([TxnOp::delete(&key)])
                        .or_else([TxnOp::get(&key)]);
                    let response = client.txn(&txn).await?;
                    match response.results.first() {
                        Some(TxnOpResult::Delete(deleted)) if response.succeeded => *deleted,
                        Some(TxnOpResult::Get(current)) => return Err(cas_failed(cas, current)),
                        _ => return Err(unexpected_txn()),
                    }
                }
            };
            Ok(Json(json!({"deleted": deleted})).into_response())
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "/v1/kv/{key} takes GET, HEAD, PUT and DELETE",
        )),
    }
}

/// A page of the keys with `prefix`, in key order across every shard.
async fn list(client: &Client, prefix: Vec<u8>, query: &Query) -> ApiResult<Response> {
    let limit = match query.number("limit")? {
        None => LIST_LIMIT_DEFAULT,
        Some(n) if (1..=LIST_LIMIT_MAX as u64).contains(&n) => n as usize,
        Some(_) => return Err(ApiError::bad_request(format!("limit: 1 to {LIST_LIMIT_MAX}"))),
    };
    let continuation = match query.get("page") {
        None | Some("") => None,
        Some(token) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .map_err(|_| ApiError::bad_request("page: not a page token this API gave"))?,
        ),
    };
    if continuation.as_ref().is_some_and(|c| !c.starts_with(&prefix)) {
        return Err(ApiError::bad_request("page: the token is of another prefix's listing"));
    }
    let options = ScanOptions {
        limit,
        keys_only: query.flag("keys_only")?,
        consistency: consistency(query)?,
        continuation,
        timeout: None,
    };
    let page = client.scan(&ScanRange::Prefix(prefix), &options).await?;
    let entries: Vec<Value> =
        page.entries.iter().map(|e| entry_json(e, client.shard_of(&e.key))).collect();
    let next =
        page.continuation.map(|c| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c));
    Ok(Json(json!({"entries": entries, "next_page": next})).into_response())
}

/// Deletes every key with `prefix`, a page at a time (each page's deletes are atomic per
/// shard; the whole is not one atomic step). Returns how many were deleted.
async fn delete_prefix(client: &Client, prefix: &[u8]) -> ApiResult<u64> {
    let mut deleted = 0u64;
    let mut continuation = None;
    loop {
        let options = ScanOptions {
            limit: DELETE_PREFIX_BATCH,
            keys_only: true,
            continuation: continuation.take(),
            ..Default::default()
        };
        let page = client.scan(&ScanRange::prefix(prefix), &options).await?;
        if !page.entries.is_empty() {
            let keys = page.entries.iter().map(|e| e.key.as_slice());
            let keys: Vec<&[u8]> = keys.collect();
            let gone = client.batch_delete(&keys, WriteOptions::default()).await?;
            deleted += gone.iter().filter(|&&d| d).count() as u64;
        }
        match page.continuation {
            Some(next) => continuation = Some(next),
            None => return Ok(deleted),
        }
    }
}

fn cas_failed(cas: u64, current: &Option<KeyValue>) -> ApiError {
    let now = match current {
        Some(entry) => format!("its mod index is now {}", entry.meta.mod_index),
        None => "it does not exist".to_string(),
    };
    ApiError::new(
        StatusCode::CONFLICT,
        "compare_failed",
        format!("the key's mod index is not {cas}: {now}"),
    )
}

fn unexpected_txn() -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "cluster_error", "unexpected transaction reply")
}

// ---------------------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------------------

/// `POST /v1/txn`: `corekvctl txn`'s JSON in, the outcome out (200 whichever branch ran).
async fn txn(
    State(gateway): State<Arc<Gateway>>,
    uri: Uri,
    Caller(client): Caller,
    body: Body,
) -> ApiResult<Response> {
    Query::taking(&uri, &[])?;
    let (body, _held) = read_body(&gateway, body, gateway.max_body, "the body").await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("transaction: the body is not UTF-8"))?;
    let txn = parse_txn(text).map_err(|e| ApiError::bad_request(format!("transaction: {e}")))?;
    let response = client.txn(&txn).await?;
    let shard = txn.keys().next().map(|k| client.shard_of(k).get());
    let results: Vec<Value> = response
        .results
        .iter()
        .map(|result| match result {
            TxnOpResult::Get(found) => {
                json!({"get": found.as_ref().map(|e| entry_json(e, client.shard_of(&e.key)))})
            }
            TxnOpResult::Put(meta) => json!({"put": {"create_index": meta.create_index,
                "mod_index": meta.mod_index, "version": meta.version}}),
            TxnOpResult::Delete(deleted) => json!({"delete": deleted}),
        })
        .collect();
    Ok(Json(json!({"succeeded": response.succeeded, "failed_compare": response.failed_compare,
        "index": response.index, "shard": shard, "results": results}))
    .into_response())
}

// ---------------------------------------------------------------------------------------
// Leases
// ---------------------------------------------------------------------------------------

/// `POST /v1/lease?ttl=30s&key=K` (the lease lives on K's shard, where the keys put with it
/// must be) or `&shard=N`.
async fn lease_grant(uri: Uri, Caller(client): Caller) -> ApiResult<Response> {
    let query = Query::taking(&uri, &["ttl", "key", "shard"])?;
    let ttl = query.get("ttl").ok_or_else(|| ApiError::bad_request("ttl is required"))?;
    let ttl = duration(ttl).map_err(|e| ApiError::bad_request(format!("ttl: {e}")))?;
    let lease = match (query.get("key"), query.number("shard")?) {
        (Some(key), None) => client.lease_grant_for(key, ttl).await?,
        (None, Some(shard)) if shard < u64::from(client.shard_count()) => {
            client.lease_grant_on(ShardId(shard as u32), ttl).await?
        }
        (None, Some(shard)) => {
            let count = client.shard_count();
            return Err(ApiError::bad_request(format!("shard {shard}: the cluster has {count}")));
        }
        _ => {
            return Err(ApiError::bad_request(
                "name the lease's shard: key=K (the shard of the keys it will hold) or shard=N",
            ))
        }
    };
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": lease.id.to_string(), "ttl_ms": lease.ttl.as_millis() as u64,
            "shard": lease.id.shard().get(), "index": lease.index})),
    )
        .into_response())
}

/// `GET /v1/lease/{id}`: its time to live and time left; `?keys` lists its keys.
async fn lease_info(uri: Uri, Caller(client): Caller) -> ApiResult<Response> {
    let query = Query::taking(&uri, &["keys"])?;
    let info = client.lease_time_to_live(lease_in_path(&uri)?, query.flag("keys")?).await?;
    let keys: Vec<Value> = info.keys.iter().map(|k| bytes_json(k)).collect();
    Ok(Json(json!({"id": info.id.to_string(), "ttl_ms": info.ttl.as_millis() as u64,
        "remaining_ms": info.remaining.as_millis() as u64, "keys": keys}))
    .into_response())
}

/// `POST /v1/lease/{id}/keepalive`: restarts its time to live.
async fn lease_keep_alive(uri: Uri, Caller(client): Caller) -> ApiResult<Response> {
    Query::taking(&uri, &[])?;
    let id = lease_in_path(&uri)?;
    let kept = client.lease_keep_alive(id).await?;
    Ok(Json(json!({"id": id.to_string(), "ttl_ms": kept.ttl.as_millis() as u64,
        "durable_ms": kept.durable.as_millis() as u64}))
    .into_response())
}

/// `DELETE /v1/lease/{id}`: ends it and deletes its keys.
async fn lease_revoke(uri: Uri, Caller(client): Caller) -> ApiResult<Response> {
    Query::taking(&uri, &[])?;
    let id = lease_in_path(&uri)?;
    let deleted = client.lease_revoke(id).await?;
    Ok(Json(json!({"id": id.to_string(), "deleted_keys": deleted})).into_response())
}

/// The lease id of `/v1/lease/{id}[/...]`.
fn lease_in_path(uri: &Uri) -> ApiResult<LeaseId> {
    let segment = uri.path().split('/').nth(3).unwrap_or_default();
    let text = String::from_utf8(percent_decode(segment)?)
        .map_err(|_| ApiError::bad_request("lease id: not text"))?;
    lease_id(&text)
}

fn lease_id(text: &str) -> ApiResult<LeaseId> {
    text.parse().map_err(|e: String| ApiError::bad_request(format!("lease id: {e}")))
}

// ---------------------------------------------------------------------------------------
// Requests and responses
// ---------------------------------------------------------------------------------------

/// The query string's parameters, decoded. Every endpoint names the ones it takes: an
/// unknown one (a typo like `?prefx`) is an error, not silently ignored.
pub(crate) struct Query {
    params: Vec<(String, String)>,
}

impl Query {
    pub(crate) fn parse(query: Option<&str>) -> ApiResult<Query> {
        let mut params = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let text = |part: &str| {
                let bytes = percent_decode(&part.replace('+', " "))?;
                String::from_utf8(bytes).map_err(|_| {
                    ApiError::bad_request(format!("query parameter {name:?} is not UTF-8"))
                })
            };
            params.push((text(name)?, text(value)?));
        }
        Ok(Query { params })
    }

    /// The parameters of `uri`, which must all be in `allowed` (see [`Query::only`]).
    pub(crate) fn taking(uri: &Uri, allowed: &[&str]) -> ApiResult<Query> {
        let query = Query::parse(uri.query())?;
        query.only(allowed)?;
        Ok(query)
    }

    /// An error naming the first parameter not in `allowed`.
    pub(crate) fn only(&self, allowed: &[&str]) -> ApiResult<()> {
        match self.params.iter().find(|(name, _)| !allowed.contains(&name.as_str())) {
            None => Ok(()),
            Some((name, _)) if allowed.is_empty() => {
                Err(ApiError::bad_request(format!("unknown query parameter {name:?}")))
            }
            Some((name, _)) => Err(ApiError::bad_request(format!(
                "unknown query parameter {name:?} (this endpoint takes {})",
                allowed.join(", ")
            ))),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A flag: true when present without a value or as `true`/`1`, false when absent or
    /// `false`/`0`; anything else is an error (not a silent false).
    pub(crate) fn flag(&self, name: &str) -> ApiResult<bool> {
        match self.get(name) {
            None | Some("false" | "0") => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "{name}={other:?}: a flag is true or false (1 or 0, or given without a value)"
            ))),
        }
    }

    pub(crate) fn number(&self, name: &str) -> ApiResult<Option<u64>> {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!("{name}: {v:?} is not a whole number"))
                })
            })
            .transpose()
    }
}

/// Decodes `%XX` escapes to bytes.
pub(crate) fn percent_decode(text: &str) -> ApiResult<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            let hex = hex.and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| {
                ApiError::bad_request("a % in the URL is not followed by two hexadecimal digits")
            })?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The key a path names after `base` (`/v1/kv/a%2Fb` → `a/b`).
pub(crate) fn path_key(path: &str, base: &str) -> ApiResult<Vec<u8>> {
    let rest = path.strip_prefix(base).unwrap_or("");
    percent_decode(rest.strip_prefix('/').unwrap_or(rest))
}

/// The client a request acts through: its bearer token's (which wins), else that of the user
/// of the client certificate the gateway verified, else the gateway's own.
pub(crate) struct Caller(pub(crate) Client);

impl FromRequestParts<Arc<Gateway>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Arc<Gateway>,
    ) -> Result<Caller, ApiError> {
        if let Some(token) = bearer_token(&parts.headers)? {
            if !gateway.tokens_allowed {
                return Err(ApiError::bad_request(
                    "a bearer token over plaintext HTTP is refused: use the gateway's HTTPS \
                     (--tls-cert), or start it with --plaintext-tokens behind a proxy that \
                     terminates TLS",
                ));
            }
            return Ok(Caller(gateway.client(Some(&Identity::Token(token)))));
        }
        let user = parts.extensions.get::<CertUser>().map(|u| Identity::User(u.0.clone()));
        Ok(Caller(gateway.client(user.as_ref())))
    }
}

/// The bearer token of `Authorization`, if any.
fn bearer_token(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| ApiError::bad_request("Authorization: not text"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim().to_string()))
        }
        _ => Err(ApiError::bad_request("Authorization: only \"Bearer TOKEN\" is understood")),
    }
}

/// The request body, up to `limit` bytes (413 past it, kept nowhere; 400 for a body that
/// could not be read), with its share of the gateway's memory for bodies (its length when it
/// says, else `limit`): 503 when the bodies held would pass `--max-body-memory` (413 when
/// this one alone would). The share is held until the returned permit drops.
async fn read_body(
    gateway: &Gateway,
    body: Body,
    limit: usize,
    what: &str,
) -> ApiResult<(Bytes, OwnedSemaphorePermit)> {
    use axum::body::HttpBody;
    let length = body.size_hint().exact();
    let size = length.map_or(limit as u64, |n| n.min(limit as u64));
    let kib = u32::try_from(size.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    let refusal = if let Some(length) = length.filter(|&n| n > limit as u64) {
        Some(ApiError::too_large(format!(
            "{what} of {length} bytes is over the limit of {limit} bytes"
        )))
    } else if kib as usize > gateway.body_memory_kib {
        Some(ApiError::too_large(format!(
            "{what} of {size} bytes is more than the gateway's memory for request bodies \
             (--max-body-memory)"
        )))
    } else {
        None
    };
    let held = match refusal {
        Some(refusal) => Err(refusal),
        None => gateway.body_memory.clone().try_acquire_many_owned(kib).map_err(|_| {
            ApiError::unavailable("the gateway holds as many request bodies as it may: retry")
        }),
    };
    let held = match held {
        Ok(held) => held,
        Err(refusal) => {
            // Read what the caller sends (up to a bound) before answering: an answer sent
            // while it still sends can be lost in the reset of a connection closed with data
            // unread.
            if length.is_some_and(|n| n <= DRAIN_BYTES_MAX) {
                let mut chunks = body.into_data_stream();
                let drain = async { while let Some(Ok(_)) = chunks.next().await {} };
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
            }
            return Err(refusal);
        }
    };
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|error| {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(inner) = cause {
            if inner.is::<http_body_util::LengthLimitError>() {
                return ApiError::too_large(format!("{what} is over the limit of {limit} bytes"));
            }
            cause = inner.source();
        }
        ApiError::bad_request(format!("reading the body: {error}"))
    })?;
    Ok((bytes, held))
}

fn consistency(query: &Query) -> ApiResult<Consistency> {
    Ok(if query.flag("stale")? { Consistency::Stale } else { Consistency::Linearizable })
}

fn json_format(query: &Query) -> ApiResult<bool> {
    match query.get("format") {
        None | Some("raw") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!("format {other:?}: raw or json"))),
    }
}

/// A time to live: whole seconds (`30`) or a duration (`30s`, `500ms`).
fn duration(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => parse_duration(text),
    }
}

fn write_options(query: &Query) -> ApiResult<WriteOptions> {
    let ttl = query
        .get("ttl")
        .map(|t| duration(t).map_err(|e| ApiError::bad_request(format!("ttl: {e}"))))
        .transpose()?;
    let lease = query.get("lease").map(lease_id).transpose()?;
    if ttl.is_some() && lease.is_some() {
        return Err(ApiError::bad_request("ttl and lease do not go together"));
    }
    Ok(WriteOptions { ttl, lease, timeout: None })
}

/// Puts `bytes` in `object` as `name` when they are UTF-8, else base64 as `{name}_b64`.
pub(crate) fn put_bytes(object: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(name.to_string(), json!(text)),
        Err(_) => object.insert(
            format!("{name}_b64"),
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}

/// A key alone: its text, or `{"key_b64": ...}`.
fn bytes_json(bytes: &[u8]) -> Value {
    let mut object = Map::new();
    put_bytes(&mut object, "key", bytes);
    Value::Object(object)
}

/// An entry as JSON: `key`/`key_b64`, `value`/`value_b64`, its metadata and shard.
pub(crate) fn entry_json(entry: &KeyValue, shard: ShardId) -> Value {
    let mut object = Map::new();
    put_bytes(&mut object, "key", &entry.key);
    put_bytes(&mut object, "value", &entry.value);
    add_meta(&mut object, &entry.meta, shard);
    if let Some(ttl) = entry.ttl {
        object.insert("ttl_ms".into(), json!(ttl.as_millis() as u64));
    }
    if let Some(lease) = entry.lease {
        object.insert("lease".into(), json!(lease.to_string()));
    }
    Value::Object(object)
}

fn meta_json(key: &[u8], meta: &KeyMeta, shard: ShardId) -> Value {
    let mut object = Map::new();
    put_bytes(&mut object, "key", key);
    add_meta(&mut object, meta, shard);
    Value::Object(object)
}

pub(crate) fn add_meta(object: &mut Map<String, Value>, meta: &KeyMeta, shard: ShardId) {
    object.insert("create_index".into(), json!(meta.create_index));
    object.insert("mod_index".into(), json!(meta.mod_index));
    object.insert("version".into(), json!(meta.version));
    object.insert("shard".into(), json!(shard.get()));
}

const CREATE_INDEX: HeaderName = HeaderName::from_static("x-corekv-create-index");
const MOD_INDEX: HeaderName = HeaderName::from_static("x-corekv-mod-index");
const VERSION: HeaderName = HeaderName::from_static("x-corekv-version");
const SHARD: HeaderName = HeaderName::from_static("x-corekv-shard");
const TTL_MS: HeaderName = HeaderName::from_static("x-corekv-ttl-ms");
const LEASE: HeaderName = HeaderName::from_static("x-corekv-lease");
const STALE: HeaderName = HeaderName::from_static("x-corekv-stale");

fn meta_headers(headers: &mut HeaderMap, meta: &KeyMeta, shard: ShardId) {
    headers.insert(CREATE_INDEX, HeaderValue::from(meta.create_index));
    headers.insert(MOD_INDEX, HeaderValue::from(meta.mod_index));
    headers.insert(VERSION, HeaderValue::from(meta.version));
    headers.insert(SHARD, HeaderValue::from(shard.get()));
}

/// A value's raw bytes, its metadata in headers.
fn value_response(entry: KeyValue, shard: ShardId, stale: bool) -> Response {
    let mut response = Response::new(Body::from(entry.value));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    meta_headers(headers, &entry.meta, shard);
    if let Some(ttl) = entry.ttl {
        headers.insert(TTL_MS, HeaderValue::from(ttl.as_millis() as u64));
    }
    if let Some(lease) = entry.lease {
        if let Ok(value) = HeaderValue::from_str(&lease.to_string()) {
            headers.insert(LEASE, value);
        }
    }
    if stale {
        headers.insert(STALE, HeaderValue::from_static("true"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: paths and queries decode to the bytes a client meant, and mistakes are refused.
    #[test]
    fn paths_and_queries_decode() {
        assert_eq!(path_key("/v1/kv/a%2Fb/c", "/v1/kv").unwrap(), b"a/b/c");
        assert_eq!(path_key("/v1/kv/%00%ff", "/v1/kv").unwrap(), vec![0, 0xff]);
        assert_eq!(path_key("/v1/kv", "/v1/kv").unwrap(), b"");
        assert_eq!(path_key("/v1/kv/", "/v1/kv").unwrap(), b"");
        assert!(path_key("/v1/kv/%zz", "/v1/kv").is_err());
        assert!(path_key("/v1/kv/%4", "/v1/kv").is_err());
        assert!(path_key("/v1/kv/%+5", "/v1/kv").is_err());
        let query = Query::parse(Some("prefix&limit=10&page=a%3Db&stale=true")).unwrap();
        assert!(query.flag("prefix").unwrap() && query.flag("stale").unwrap());
        assert!(!query.flag("keys_only").unwrap());
        let flags = Query::parse(Some("a=false&b=0&c=TRUE")).unwrap();
        assert!(!flags.flag("a").unwrap() && !flags.flag("b").unwrap());
        assert!(flags.flag("c").unwrap_err().message.contains("true or false"));
        assert_eq!(query.number("limit").unwrap(), Some(10));
        assert_eq!(query.get("page"), Some("a=b"));
        assert!(query.only(&["prefix", "limit", "page", "stale"]).is_ok());
        assert!(query.only(&["prefix"]).unwrap_err().message.contains("\"limit\""));
        assert!(Query::parse(Some("limit=ten")).unwrap().number("limit").is_err());
        assert!(Query::parse(Some("k=%ff")).is_err());
    }

    // Shows: a time to live reads as seconds or as a duration; zero is refused.
    #[test]
    fn time_to_live_forms() {
        assert_eq!(duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(duration("0").is_err());
        assert!(duration("soon").is_err());
    }

    // Shows: UTF-8 bytes come out as text, others as base64 under `_b64`.
    #[test]
    fn entries_as_json() {
        let meta = KeyMeta { create_index: 3, mod_index: 7, version: 2 };
        let entry =
            KeyValue { key: b"k".to_vec(), value: vec![0xff, 0], meta, ttl: None, lease: None };
        let json = entry_json(&entry, ShardId(1));
        assert_eq!(json["key"], "k");
        assert_eq!(json["value_b64"], "/wA=");
        assert!(json.get("value").is_none());
        assert_eq!(json["mod_index"], 7);
        assert_eq!(json["shard"], 1);
    }
}
