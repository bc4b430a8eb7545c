//! gRPC endpoints of the API contract: `twinreg.v1.Registry` (proto/twinreg/v1/registry.proto),
//! the standard health service and server reflection, on the same TLS listener as REST.
//!
//! Every RPC goes through the same code as its REST twin ([`super::front`] for identity,
//! authorization and failures, [`register_from_fields`] for validation), so the two fronts give
//! the same answers with the same field names and messages; only the error envelope differs
//! ([`status`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request as HttpRequest;
use axum::response::Response as HttpResponse;
use futures::Stream;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::AppState;
use super::error::failure;
use super::front;
use super::layers::{Edge, Rules, Seen};
use crate::api::error::{ApiError, ErrorCode, OutcomesLog, into_status};
use crate::authz::Peer;
use crate::merge::view_index;
use crate::metrics::{Answered, grpc_code_name};
use crate::model::{Instance, InstanceKey, MAX_BODY_BYTES, register_from_fields};
use crate::replicate::{Coordinator, Outcomes};
use crate::watch::{Event, EventKind};

/// Code generated from `proto/twinreg/v1/registry.proto` (server and client), and its file
/// descriptor set for reflection.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("twinreg.v1");

    /// The encoded `FileDescriptorSet` of `twinreg.v1`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("twinreg_v1_descriptor");
}

use pb::registry_server::{Registry, RegistryServer};

/// The health service name of the registry API (the "" name is the whole server).
pub const SERVICE_NAME: &str = "twinreg.v1.Registry";
/// How often the health service re-reads the coordinator's readiness.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// The gRPC services, as an axum router to sit beside the REST one: `twinreg.v1.Registry`,
/// `grpc.health.v1.Health` and reflection (v1 and v1alpha). The health statuses start
/// NOT_SERVING; [`health_loop`] keeps them up to date through the returned reporter.
pub async fn router(state: AppState) -> (Edge<GrpcEdge>, HealthReporter) {
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, false).await;
    let registry =
        RegistryServer::new(Grpc { st: state.clone() }).max_decoding_message_size(MAX_BODY_BYTES);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let routes = tonic::service::Routes::new(registry)
        .add_service(health)
        .add_service(
            reflection()
                .build_v1()
                .expect("the compiled-in descriptor sets are valid"),
        )
        .add_service(
            reflection()
                .build_v1alpha()
                .expect("the compiled-in descriptor sets are valid"),
        )
        .prepare();
    (Edge::new(routes.into_axum_router(), state), reporter)
}

/// Keeps the health statuses of "" and `twinreg.v1.Registry` at SERVING while the coordinator is
/// ready (a registry is up) and NOT_SERVING otherwise; NOT_SERVING for good once `stop` is
/// cancelled (shutdown started), at once.
pub async fn health_loop(
    reporter: HealthReporter,
    coordinator: Arc<Coordinator>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    let mut last = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => {
                set_health(&reporter, false).await;
                return;
            }
        }
        let serving = coordinator.ready();
        if serving != last {
            set_health(&reporter, serving).await;
            last = serving;
        }
    }
}

async fn set_health(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in ["", SERVICE_NAME] {
        reporter.set_service_status(name, status).await;
    }
}

fn registries(o: &Outcomes) -> HashMap<String, pb::RegistryOutcome> {
    o.0.iter()
        .map(|o| {
            (
                o.registry.as_str().to_owned(),
                pb::RegistryOutcome {
                    ok: o.error.is_none(),
                    latency_ms: o.latency.as_millis() as u64,
                    error: o.error.clone().unwrap_or_default(),
                    coalesced: o.coalesced,
                },
            )
        })
        .collect()
}

/// A register request's fields as the JSON object REST validates, so both fronts share one set of
/// rules and messages. An empty `address` (proto3 cannot tell it from an unset one) is left out:
/// "address: is required". `ttl_seconds` only when set: unset means the default.
pub(crate) fn register_fields(r: pb::RegisterRequest) -> Map<String, Value> {
    let mut m = Map::new();
    if !r.address.is_empty() {
        m.insert("address".into(), Value::String(r.address));
    }
    m.insert("port".into(), r.port.into());
    m.insert("tags".into(), r.tags.into());
    m.insert(
        "meta".into(),
        Value::Object(
            r.meta
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ),
    );
    if let Some(ttl) = r.ttl_seconds {
        m.insert("ttl_seconds".into(), ttl.into());
    }
    m
}

fn instance(i: &Instance, sources: &[crate::registry::RegistryKind]) -> pb::Instance {
    pb::Instance {
        id: i.key.id.as_str().to_owned(),
        address: i.address.clone(),
        port: u32::from(i.port),
        tags: i.tags.clone(),
        meta: i
            .meta
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        ttl_seconds: i.ttl_seconds,
        sources: sources.iter().map(|s| s.as_str().to_owned()).collect(),
        drained: i.drained,
    }
}

fn watch_event(service: &str, e: Event) -> pb::WatchEvent {
    use pb::watch_event::Type;
    let kind = match e.kind {
        EventKind::Added => Type::Added,
        EventKind::Modified => Type::Modified,
        EventKind::Deleted => Type::Deleted,
        EventKind::Empty => Type::Empty,
        EventKind::Progress => Type::Progress,
    };
    pb::WatchEvent {
        r#type: kind as i32,
        service: service.to_owned(),
        instance: e
            .instance
            .as_ref()
            .map(|s| instance(&s.instance, &s.sources)),
        index: e.index,
        snapshot: e.snapshot,
        registries: e.registries.iter().map(|r| r.as_str().to_owned()).collect(),
    }
}

/// The caller, from the identity `server.rs` attached to the connection's requests.
fn caller<T>(req: &Request<T>) -> Result<Arc<Peer>, Status> {
    front::peer(req.extensions().get::<Arc<Peer>>()).map_err(into_status)
}

/// `twinreg.v1.Registry`.
pub struct Grpc {
    st: AppState,
}

impl Grpc {
    /// Drain and Undrain: authorized as a write.
    async fn set_drained<T>(
        &self,
        req: &Request<T>,
        service: &str,
        id: &str,
        drained: bool,
    ) -> Result<(InstanceKey, crate::replicate::WriteReport), Status> {
        let peer = caller(req)?;
        let key = front::writable_key(&self.st, &peer, service, id).map_err(into_status)?;
        let report = self
            .st
            .coordinator
            .drain(&key, drained, &peer.identity)
            .await
            .map_err(|f| into_status(failure(f)))?;
        Ok((key, report))
    }
}

#[tonic::async_trait]
impl Registry for Grpc {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let peer = caller(&req)?;
        let mut r = req.into_inner();
        let key = front::writable_key(&self.st, &peer, &r.service, &r.id).map_err(into_status)?;
        let (service, id) = (std::mem::take(&mut r.service), std::mem::take(&mut r.id));
        let instance =
            register_from_fields(key, register_fields(r)).map_err(|e| into_status(e.into()))?;
        let ttl_seconds = instance.ttl_seconds;
        let report = self
            .st
            .coordinator
            .register(instance, &peer.identity)
            .await
            .map_err(|f| into_status(failure(f)))?;
        let message = pb::RegisterResponse {
            registered: true,
            service,
            id,
            ttl_seconds,
            degraded: report.outcomes.degraded(),
            registries: registries(&report.outcomes),
        };
        let (s, i) = (message.service.clone(), message.id.clone());
        Ok(answer(message, &s, &i, &report.outcomes))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let peer = caller(&req)?;
        let r = req.get_ref();
        let key = front::writable_key(&self.st, &peer, &r.service, &r.id).map_err(into_status)?;
        let report = self
            .st
            .coordinator
            .heartbeat(&key, &peer.identity)
            .await
            .map_err(|f| into_status(failure(f)))?;
        let message = pb::HeartbeatResponse {
            ok: true,
            degraded: report.outcomes.degraded(),
            registries: registries(&report.outcomes),
        };
        Ok(answer(
            message,
            key.service.as_str(),
            key.id.as_str(),
            &report.outcomes,
        ))
    }

    async fn deregister(
        &self,
        req: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let peer = caller(&req)?;
        let r = req.get_ref();
        let key = front::writable_key(&self.st, &peer, &r.service, &r.id).map_err(into_status)?;
        let report = self
            .st
            .coordinator
            .deregister(&key)
            .await
            .map_err(|f| into_status(failure(f)))?;
        let message = pb::DeregisterResponse {
            deregistered: true,
            existed: report.existed,
            degraded: report.outcomes.degraded(),
            registries: registries(&report.outcomes),
        };
        Ok(answer(
            message,
            key.service.as_str(),
            key.id.as_str(),
            &report.outcomes,
        ))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let (key, report) = self
            .set_drained(&req, &req.get_ref().service, &req.get_ref().id, true)
            .await?;
        let message = pb::DrainResponse {
            drained: true,
            degraded: report.outcomes.degraded(),
            registries: registries(&report.outcomes),
        };
        Ok(answer(
            message,
            key.service.as_str(),
            key.id.as_str(),
            &report.outcomes,
        ))
    }

    async fn undrain(
        &self,
        req: Request<pb::UndrainRequest>,
    ) -> Result<Response<pb::UndrainResponse>, Status> {
        let (key, report) = self
            .set_drained(&req, &req.get_ref().service, &req.get_ref().id, false)
            .await?;
        let message = pb::UndrainResponse {
            drained: false,
            degraded: report.outcomes.degraded(),
            registries: registries(&report.outcomes),
        };
        Ok(answer(
            message,
            key.service.as_str(),
            key.id.as_str(),
            &report.outcomes,
        ))
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let peer = caller(&req)?;
        let service = front::readable_service(&self.st, &peer, &req.get_ref().service)
            .map_err(into_status)?;
        let view = self
            .st
            .coordinator
            .list(&service)
            .await
            .map_err(|f| into_status(failure(f)))?;
        Ok(Response::new(pb::ListInstancesResponse {
            service: service.as_str().to_owned(),
            index: view_index(&view.instances),
            instances: view
                .instances
                .iter()
                .map(|s| instance(&s.instance, &s.sources))
                .collect(),
            registries: registries(&view.outcomes),
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

    /// The service's events from its shared watch hub ([`crate::watch`]). The stream ends only
    /// with an error (UNAVAILABLE: this replica is shutting down, or no registry has answered
    /// for a while), never silently; the client reconnects with the last `index` it saw.
    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = caller(&req)?;
        let r = req.into_inner();
        let service = front::readable_service(&self.st, &peer, &r.service).map_err(into_status)?;
        let sub = self
            .st
            .watches
            .subscribe(&service, r.resume_index)
            .await
            .map_err(|e| into_status(e.into()))?;
        let name = service.as_str().to_owned();
        let events = futures::stream::unfold(Some(sub), move |sub| {
            let name = name.clone();
            async move {
                let mut sub = sub?;
                match sub.next().await {
                    Ok(e) => Some((Ok(watch_event(&name, e)), Some(sub))),
                    Err(e) => Some((Err(into_status(e.into())), None)),
                }
            }
        });
        Ok(Response::new(Box::pin(events)))
    }
}

/// The `twinreg_http_requests_total` route label of a gRPC method (`grpc.Register`, ...): a fixed
/// set, so a client cannot create series by calling made-up paths.
fn route_label(path: &str) -> &'static str {
    match path {
        "/twinreg.v1.Registry/Register" => "grpc.Register",
        "/twinreg.v1.Registry/Heartbeat" => "grpc.Heartbeat",
        "/twinreg.v1.Registry/Deregister" => "grpc.Deregister",
        "/twinreg.v1.Registry/Drain" => "grpc.Drain",
        "/twinreg.v1.Registry/Undrain" => "grpc.Undrain",
        "/twinreg.v1.Registry/ListInstances" => "grpc.ListInstances",
        "/twinreg.v1.Registry/Watch" => "grpc.Watch",
        "/grpc.health.v1.Health/Check" => "grpc.health.Check",
        "/grpc.health.v1.Health/Watch" => "grpc.health.Watch",
        p if p.starts_with("/grpc.reflection.") => "grpc.reflection",
        _ => "grpc.other",
    }
}

/// Whether a route's calls stream their answers (and so wait by design).
fn streams(route: &str) -> bool {
    matches!(
        route,
        "grpc.Watch" | "grpc.health.Watch" | "grpc.reflection"
    )
}

/// The gRPC edge: streams wait by design, errors are gRPC statuses.
pub struct GrpcEdge;

impl Rules for GrpcEdge {
    /// Streams wait by design; unary calls are answered within the request timeout.
    fn waits(req: &HttpRequest) -> bool {
        streams(route_label(req.uri().path()))
    }

    fn timed_out(limit: Duration) -> HttpResponse {
        into_status(ApiError::unavailable(
            format!("not answered within {} ms; retry", limit.as_millis()),
            super::error::retry_after(),
        ))
        .into_http()
    }

    fn refused(e: ApiError) -> HttpResponse {
        into_status(e).into_http()
    }

    /// Counts and logs every gRPC call like REST's; the `status` label is the gRPC status code
    /// the call answered with in its headers (0 when it started OK; a stream's final status
    /// travels in trailers, after this). Also turns tonic's own error for a message over the
    /// 64 KiB cap (OUT_OF_RANGE, raised before any handler runs) into the API's
    /// INVALID_ARGUMENT.
    fn finish(st: &AppState, seen: &Seen, mut resp: HttpResponse) -> HttpResponse {
        let path = seen.uri.path();
        let route = route_label(path);
        let mut code = resp
            .headers()
            .get("grpc-status")
            .map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes()));
        if code == Code::OutOfRange && path.starts_with("/twinreg.v1.Registry/") {
            let too_large = ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request message exceeds {} KiB", MAX_BODY_BYTES / 1024),
            );
            resp = into_status(too_large).into_http();
            code = Code::InvalidArgument;
        }
        st.metrics.observe_request(
            &seen.method,
            Answered {
                route,
                status: resp.status().as_u16(),
                grpc_code: Some(grpc_code_name(code)),
                // A stream answers with its headers and then streams: counted, not timed.
                took: (!streams(route)).then(|| seen.start.elapsed()),
            },
        );
        let target = resp.extensions().get::<Target>();
        let (service, instance) = target.map_or(("", ""), |t| (t.0.as_str(), t.1.as_str()));
        let registries = front::outcomes_logged(&resp);
        let quiet = route == "grpc.Heartbeat" && code == Code::Ok;
        front::request_line!(
            quiet,
            request_id = seen.request_id(),
            method = %seen.method,
            path,
            grpc_status = code as i32,
            identity = seen.identity(),
            service,
            instance,
            registries,
            took_ms = seen.took_ms(),
            "grpc request"
        );
        resp
    }
}

/// The service and instance a call acted on, attached to its response for the request log.
#[derive(Clone)]
struct Target(String, String);

/// A successful answer with what the request log line needs.
fn answer<T>(message: T, service: &str, id: &str, outcomes: &Outcomes) -> Response<T> {
    let mut resp = Response::new(message);
    resp.extensions_mut()
        .insert(Target(service.to_owned(), id.to_owned()));
    resp.extensions_mut()
        .insert(OutcomesLog(outcomes.log_line()));
    resp
}
