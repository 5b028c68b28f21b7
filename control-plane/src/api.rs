//! The control plane's HTTP JSON API (`/v1/...`, described by `openapi.json` beside this
//! crate's sources and served at `/v1/openapi.json`).
//!
//! Two halves: [`serve`] is the HTTP/1.1 server (hyper) that reads each request with a size
//! limit and hands it, as an [`ApiRequest`], to the control plane's task; [`dispatch`] runs
//! there, routes the request to a [`ControlPlane`] operation and turns the outcome into an
//! [`ApiResponse`]. Every route but the OpenAPI document needs `Authorization: Bearer
//! <token>`; errors are `{"error": {"kind": ..., "message": ...}}` with the status of their
//! kind (400, 401, 403, 404, 409, 503, 500).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::service::{
    api_error, ApiError, Backend, ControlPlane, CreateBranch, CreateEndpoint, CreateProject,
    CreateRole, ErrorKind, SetPassword, UpdateEndpoint,
};

/// The largest request body accepted, in bytes.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;
/// How long reading one request's body may take, in milliseconds.
pub const REQUEST_READ_TIMEOUT_MS: u64 = 10_000;
/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// One request, as the control plane's task sees it.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: Method,
    /// The path without the query string.
    pub path: String,
    /// `(name, value)` pairs of the query string, percent-decoded.
    pub query: Vec<(String, String)>,
    pub token: Option<String>,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub body: Value,
}

impl ApiResponse {
    fn ok(body: Value) -> ApiResponse {
        ApiResponse {
            status: StatusCode::OK,
            body,
        }
    }

    fn created(body: Value) -> ApiResponse {
        ApiResponse {
            status: StatusCode::CREATED,
            body,
        }
    }

    pub fn error(e: &ApiError) -> ApiResponse {
        ApiResponse {
            status: status_of(e.kind),
            body: json!({ "error": { "kind": e.kind, "message": e.message } }),
        }
    }
}

pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn body<T: DeserializeOwned + Default>(
    request: &ApiRequest,
    allow_empty: bool,
) -> Result<T, ApiError> {
    if request.body.iter().all(u8::is_ascii_whitespace) {
        if allow_empty {
            return Ok(T::default());
        }
        return Err(api_error(
            ErrorKind::BadRequest,
            "this request needs a JSON body",
        ));
    }
    serde_json::from_slice(&request.body).map_err(|e| {
        api_error(
            ErrorKind::BadRequest,
            format!("the request body is not valid: {e}"),
        )
    })
}

fn required_body<T: DeserializeOwned>(request: &ApiRequest) -> Result<T, ApiError> {
    if request.body.iter().all(u8::is_ascii_whitespace) {
        return Err(api_error(
            ErrorKind::BadRequest,
            "this request needs a JSON body",
        ));
    }
    serde_json::from_slice(&request.body).map_err(|e| {
        api_error(
            ErrorKind::BadRequest,
            format!("the request body is not valid: {e}"),
        )
    })
}

fn query<'a>(request: &'a ApiRequest, name: &str) -> Option<&'a str> {
    request
        .query
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

fn to_json<T: serde::Serialize>(value: T) -> Value {
    serde_json::to_value(value).expect("API views serialize")
}

/// Routes one request to its operation.
pub async fn dispatch(
    control_plane: &mut ControlPlane,
    backend: &mut impl Backend,
    request: ApiRequest,
) -> ApiResponse {
    match route(control_plane, backend, &request).await {
        Ok(response) => response,
        Err(e) => {
            match e.kind {
                ErrorKind::Internal | ErrorKind::Unavailable => {
                    warn!(method = %request.method, path = %request.path, "API request failed: {e}")
                }
                _ => {
                    info!(method = %request.method, path = %request.path, "API request refused: {e}")
                }
            }
            ApiResponse::error(&e)
        }
    }
}

async fn route(
    cp: &mut ControlPlane,
    backend: &mut impl Backend,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let segments: Vec<&str> = request
        .path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .collect();
    let method = &request.method;
    if segments.first() != Some(&"v1") {
        return Err(api_error(
            ErrorKind::NotFound,
            format!("no such path: {}", request.path),
        ));
    }
    if segments[1..] == ["openapi.json"] && method == Method::GET {
        let document: Value = serde_json::from_str(OPENAPI).expect("openapi.json is valid JSON");
        return Ok(ApiResponse::ok(document));
    }
    let scope = cp.authorize(request.token.as_deref())?;
    let not_allowed = || {
        api_error(
            ErrorKind::BadRequest,
            format!("{method} is not allowed on {}", request.path),
        )
    };
    match &segments[1..] {
        ["projects"] => match *method {
            Method::GET => Ok(ApiResponse::ok(
                json!({ "projects": cp.list_projects(&scope)? }),
            )),
            Method::POST => {
                let created = cp
                    .create_project(backend, &scope, body::<CreateProject>(request, true)?, None)
                    .await?;
                Ok(ApiResponse::created(to_json(created)))
            }
            _ => Err(not_allowed()),
        },
        ["projects", project] => match *method {
            Method::GET => Ok(ApiResponse::ok(
                json!({ "project": cp.get_project(&scope, project)? }),
            )),
            Method::DELETE => Ok(ApiResponse::ok(
                json!({ "project": cp.delete_project(backend, &scope, project).await? }),
            )),
            _ => Err(not_allowed()),
        },
        ["projects", project, "tokens"] => match *method {
            Method::POST => Ok(ApiResponse::created(
                json!({ "token": cp.create_token(&scope, project)? }),
            )),
            _ => Err(not_allowed()),
        },
        ["projects", project, "connection_uri"] => match *method {
            Method::GET => Ok(ApiResponse::ok(json!({
                "uri": cp.connection_uri_for(
                    &scope,
                    project,
                    query(request, "branch"),
                    query(request, "endpoint"),
                    query(request, "role"),
                )?
            }))),
            _ => Err(not_allowed()),
        },
        ["projects", project, "branches"] => match *method {
            Method::GET => Ok(ApiResponse::ok(
                json!({ "branches": cp.list_branches(&scope, project)? }),
            )),
            Method::POST => {
                let created = cp
                    .create_branch(
                        backend,
                        &scope,
                        project,
                        required_body::<CreateBranch>(request)?,
                    )
                    .await?;
                Ok(ApiResponse::created(to_json(created)))
            }
            _ => Err(not_allowed()),
        },
        ["projects", project, "branches", branch] => match *method {
            Method::GET => Ok(ApiResponse::ok(
                json!({ "branch": cp.get_branch(&scope, project, branch)? }),
            )),
            Method::DELETE => Ok(ApiResponse::ok(json!({
                "branch": cp.delete_branch(backend, &scope, project, branch).await?
            }))),
            _ => Err(not_allowed()),
        },
        ["projects", project, "branches", branch, "reset"] => match *method {
            Method::POST => Ok(ApiResponse::ok(json!({
                "branch": cp.reset_branch(backend, &scope, project, branch).await?
            }))),
            _ => Err(not_allowed()),
        },
        ["projects", project, "endpoints"] => match *method {
            Method::GET => Ok(ApiResponse::ok(json!({
                "endpoints": cp.list_endpoints(backend, &scope, project)?
            }))),
            Method::POST => Ok(ApiResponse::created(json!({
                "endpoint": cp.create_endpoint(backend, &scope, project, required_body::<CreateEndpoint>(request)?)?
            }))),
            _ => Err(not_allowed()),
        },
        ["projects", project, "endpoints", endpoint] => match *method {
            Method::GET => Ok(ApiResponse::ok(json!({
                "endpoint": cp.get_endpoint(backend, &scope, project, endpoint)?
            }))),
            Method::PATCH => Ok(ApiResponse::ok(json!({
                "endpoint": cp.update_endpoint(backend, &scope, project, endpoint, required_body::<UpdateEndpoint>(request)?)?
            }))),
            Method::DELETE => Ok(ApiResponse::ok(json!({
                "endpoint": cp.delete_endpoint(backend, &scope, project, endpoint).await?
            }))),
            _ => Err(not_allowed()),
        },
        ["projects", project, "endpoints", endpoint, action @ ("start" | "suspend")] => {
            if *method != Method::POST {
                return Err(not_allowed());
            }
            let view = if *action == "start" {
                cp.start_endpoint(backend, &scope, project, endpoint)
                    .await?
            } else {
                cp.suspend_endpoint(backend, &scope, project, endpoint)
                    .await?
            };
            Ok(ApiResponse::ok(json!({ "endpoint": view })))
        }
        ["projects", project, "roles"] => match *method {
            Method::GET => Ok(ApiResponse::ok(
                json!({ "roles": cp.list_roles(&scope, project)? }),
            )),
            Method::POST => Ok(ApiResponse::created(json!({
                "role": cp.create_role(&scope, project, required_body::<CreateRole>(request)?)?
            }))),
            _ => Err(not_allowed()),
        },
        ["projects", project, "roles", role] => match *method {
            Method::DELETE => Ok(ApiResponse::ok(
                json!({ "role": cp.delete_role(&scope, project, role)? }),
            )),
            _ => Err(not_allowed()),
        },
        ["projects", project, "roles", role, "password"] => match *method {
            Method::POST => Ok(ApiResponse::ok(json!({
                "role": cp.set_password(&scope, project, role, body::<SetPassword>(request, true)?)?
            }))),
            _ => Err(not_allowed()),
        },
        _ => Err(api_error(
            ErrorKind::NotFound,
            format!("no such path: {}", request.path),
        )),
    }
}

/// Decodes `%XX` escapes and `+` (a space in query strings); invalid escapes stay as they are.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (percent_decode(name), percent_decode(value)),
            None => (percent_decode(pair), String::new()),
        })
        .collect()
}

/// A request for the control plane's task, with where to send the answer.
pub type ApiCall = (ApiRequest, oneshot::Sender<ApiResponse>);

async fn handle(
    request: hyper::Request<Incoming>,
    calls: mpsc::Sender<ApiCall>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let response = match read_request(request).await {
        Ok(request) => {
            let (reply, answer) = oneshot::channel();
            if calls.send((request, reply)).await.is_err() {
                ApiResponse::error(&api_error(
                    ErrorKind::Unavailable,
                    "the control plane is stopping",
                ))
            } else {
                answer.await.unwrap_or_else(|_| {
                    ApiResponse::error(&api_error(
                        ErrorKind::Unavailable,
                        "the control plane is stopping",
                    ))
                })
            }
        }
        Err(e) => ApiResponse::error(&e),
    };
    let mut text = serde_json::to_vec_pretty(&response.body).expect("JSON values serialize");
    text.push(b'\n');
    let mut http = hyper::Response::new(Full::new(Bytes::from(text)));
    *http.status_mut() = response.status;
    http.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(http)
}

async fn read_request(request: hyper::Request<Incoming>) -> Result<ApiRequest, ApiError> {
    let (parts, body) = request.into_parts();
    let token = match parts.headers.get(hyper::header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let value = value.to_str().unwrap_or("");
            match value.strip_prefix("Bearer ") {
                Some(token) => Some(token.trim().to_string()),
                None => {
                    return Err(api_error(
                        ErrorKind::Unauthorized,
                        "the Authorization header must be `Bearer <token>`",
                    ))
                }
            }
        }
    };
    let collected = tokio::time::timeout(
        std::time::Duration::from_millis(REQUEST_READ_TIMEOUT_MS),
        Limited::new(body, REQUEST_BODY_BYTES_MAX).collect(),
    )
    .await
    .map_err(|_| {
        api_error(
            ErrorKind::BadRequest,
            format!("the request body did not arrive within {REQUEST_READ_TIMEOUT_MS} ms"),
        )
    })?
    .map_err(|e| {
        api_error(
            ErrorKind::BadRequest,
            format!("cannot read the request body (at most {REQUEST_BODY_BYTES_MAX} bytes): {e}"),
        )
    })?;
    Ok(ApiRequest {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parse_query(parts.uri.query()),
        token,
        body: collected.to_bytes(),
    })
}

/// Serves the API on `listener` until the task is aborted; each request goes to `calls`.
pub async fn serve(listener: TcpListener, calls: mpsc::Sender<ApiCall>) {
    loop {
        let (stream, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("accepting an API connection failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(request, calls.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                info!(%peer, "API connection ended: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        assert_eq!(
            parse_query(Some("branch=pr-1&role=a%20b&x&y=1+2")),
            vec![
                ("branch".to_string(), "pr-1".to_string()),
                ("role".to_string(), "a b".to_string()),
                ("x".to_string(), String::new()),
                ("y".to_string(), "1 2".to_string()),
            ]
        );
        assert_eq!(percent_decode("%zz%4%+1"), "%zz%4% 1");
        assert_eq!(percent_decode("%41%"), "A%");
    }

    #[test]
    fn the_openapi_document_names_every_route() {
        let document: Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        let paths = document["paths"].as_object().expect("paths");
        for path in [
            "/v1/projects",
            "/v1/projects/{project_id}",
            "/v1/projects/{project_id}/tokens",
            "/v1/projects/{project_id}/connection_uri",
            "/v1/projects/{project_id}/branches",
            "/v1/projects/{project_id}/branches/{branch}",
            "/v1/projects/{project_id}/branches/{branch}/reset",
            "/v1/projects/{project_id}/endpoints",
            "/v1/projects/{project_id}/endpoints/{endpoint_id}",
            "/v1/projects/{project_id}/endpoints/{endpoint_id}/start",
            "/v1/projects/{project_id}/endpoints/{endpoint_id}/suspend",
            "/v1/projects/{project_id}/roles",
            "/v1/projects/{project_id}/roles/{role}",
            "/v1/projects/{project_id}/roles/{role}/password",
        ] {
            assert!(paths.contains_key(path), "openapi.json lacks {path}");
        }
    }
}
