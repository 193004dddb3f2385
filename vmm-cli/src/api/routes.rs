//! The endpoints: a request (method, path, query, body) in, a response out.
//! Everything here is synchronous; the server runs it on a blocking thread.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::control::{Action, Control, SaveSpec};
use super::error::ApiError;
use super::format::StatsFormat;

/// The API's version prefix.
pub const PREFIX: &str = "/v1";

/// An HTTP response, before it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
    /// The `Allow` header of a 405 answer.
    pub allow: Option<String>,
}

impl Response {
    fn json(status: u16, value: &serde_json::Value) -> Self {
        Response {
            status,
            content_type: "application/json",
            body: value.to_string(),
            allow: None,
        }
    }

    fn error(e: &ApiError) -> Self {
        Response {
            status: e.status,
            content_type: "application/json",
            body: e.to_json(),
            allow: None,
        }
    }
}

impl From<ApiError> for Response {
    fn from(e: ApiError) -> Self {
        Response::error(&e)
    }
}

/// The endpoints.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Vm,
    State,
    Save,
    Teleport,
    Balloon,
    Stats,
    StatsReset,
    InfoList,
    Info(&'a str),
}

impl Route<'_> {
    fn parse(path: &str) -> Option<Route<'_>> {
        let rest = path.strip_prefix(PREFIX)?;
        Some(match rest {
            "/vm" => Route::Vm,
            "/vm/state" => Route::State,
            "/vm/save" => Route::Save,
            "/vm/teleport" => Route::Teleport,
            "/balloon" => Route::Balloon,
            "/stats" => Route::Stats,
            "/stats/reset" => Route::StatsReset,
            "/info" => Route::InfoList,
            _ => {
                let name = rest.strip_prefix("/info/")?;
                if name.is_empty() || name.contains('/') {
                    return None;
                }
                Route::Info(name)
            }
        })
    }

    fn methods(&self) -> &'static [&'static str] {
        match self {
            Route::Vm | Route::Stats | Route::InfoList | Route::Info(_) => &["GET"],
            Route::State | Route::Save | Route::StatsReset => &["PUT"],
            Route::Teleport => &["PUT", "DELETE"],
            Route::Balloon => &["GET", "PUT"],
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateRequest {
    action: Action,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeleportRequest {
    address: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalloonRequest {
    size_mib: u64,
}

/// Answers one request. `query` is the raw query string (without `?`).
pub fn respond(
    control: &dyn Control,
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Response {
    let Some(route) = Route::parse(path) else {
        return ApiError::not_found(format!(
            "no endpoint {path}; see vmm-cli/openapi.yaml for the API"
        ))
        .into();
    };
    let methods = route.methods();
    if !methods.contains(&method) {
        let allowed = methods.join(", ");
        let mut response = Response::error(&ApiError::method_not_allowed(method, path, &allowed));
        response.allow = Some(allowed);
        return response;
    }
    match dispatch(control, &route, method, query, body) {
        Ok(response) => response,
        Err(e) => e.into(),
    }
}

fn dispatch(
    control: &dyn Control,
    route: &Route<'_>,
    method: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<Response, ApiError> {
    match route {
        Route::Vm => {
            query_params(query, &[])?;
            let info = serde_json::to_value(control.vm_info())
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(Response::json(200, &info))
        }
        Route::State => {
            query_params(query, &[])?;
            let request: StateRequest = json_body(body)?;
            let state = control.change_state(request.action)?;
            Ok(Response::json(
                200,
                &json!({ "action": request.action, "state": state }),
            ))
        }
        Route::Save => {
            query_params(query, &[])?;
            let spec: SaveSpec = json_body(body)?;
            let result = serde_json::to_value(control.save(&spec)?)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(Response::json(200, &result))
        }
        Route::Teleport if method == "DELETE" => {
            query_params(query, &[])?;
            no_body(body)?;
            let state = control.cancel_teleport()?;
            Ok(Response::json(
                200,
                &json!({ "cancelled": true, "state": state }),
            ))
        }
        Route::Teleport => {
            query_params(query, &[])?;
            let request: TeleportRequest = json_body(body)?;
            let result = serde_json::to_value(control.teleport(&request.address)?)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(Response::json(200, &result))
        }
        Route::Balloon => {
            query_params(query, &[])?;
            let info = if method == "PUT" {
                let request: BalloonRequest = json_body(body)?;
                control.set_balloon(request.size_mib)
            } else {
                control.balloon()
            };
            let info = serde_json::to_value(info).map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(Response::json(200, &info))
        }
        Route::Stats => {
            let params = query_params(query, &["pattern", "format"])?;
            let pattern = params.get("pattern").unwrap_or("");
            let format = match params.get("format") {
                None => StatsFormat::Json,
                Some(name) => StatsFormat::parse(name).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "unknown statistics format {name:?}; use text, json, prometheus or xml"
                    ))
                })?,
            };
            Ok(Response {
                status: 200,
                content_type: format.content_type(),
                body: control.stats(pattern, format)?,
                allow: None,
            })
        }
        Route::StatsReset => {
            let params = query_params(query, &["pattern"])?;
            no_body(body)?;
            let reset = control.reset_stats(params.get("pattern").unwrap_or(""));
            Ok(Response::json(200, &json!({ "reset": reset })))
        }
        Route::InfoList => {
            query_params(query, &[])?;
            Ok(Response::json(
                200,
                &json!({ "handlers": control.info_names() }),
            ))
        }
        Route::Info(name) => {
            let params = query_params(query, &["args"])?;
            let args = params.get("args").unwrap_or("");
            let output = control.run_info(name, args)?;
            Ok(Response::json(
                200,
                &json!({ "name": name, "args": args, "output": output }),
            ))
        }
    }
}

/// Decoded query parameters.
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes `query`, refusing parameters not in `allowed` and repeated ones.
fn query_params(query: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
    let mut params: Vec<(String, String)> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !allowed.contains(&key.as_ref()) {
            let expected = if allowed.is_empty() {
                "this endpoint takes none".to_owned()
            } else {
                format!("expected {}", allowed.join(", "))
            };
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {key:?}: {expected}"
            )));
        }
        if params.iter().any(|(k, _)| *k == key) {
            return Err(ApiError::bad_request(format!(
                "query parameter {key:?} given twice"
            )));
        }
        params.push((key.into_owned(), value.into_owned()));
    }
    Ok(Params(params))
}

/// Refuses a body where the endpoint takes none.
fn no_body(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "this request takes no body; see vmm-cli/openapi.yaml",
        ))
    }
}

/// Parses a JSON request body.
fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "this endpoint needs a JSON body; see vmm-cli/openapi.yaml",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

#[cfg(test)]
mod tests;
