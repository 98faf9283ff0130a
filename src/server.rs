//! Starting and stopping the service: open the store, bind the listener, serve until a shutdown
//! signal, then drain. Used by `main` and by the integration tests (port 0).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::{App, AppState};
use crate::config::Config;
use crate::store::Store;

/// A running server: its address and a handle to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub app: AppState,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// How long shutdown waits for WebSocket sessions to finish their in-flight work and close.
const WS_DRAIN: Duration = Duration::from_secs(10);

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish, closes WebSockets with 1001, and waits
    /// for the server to end.
    pub async fn shutdown(self) {
        // Not ready at once; keep serving for the configured delay so load balancers that
        // poll /readyz stop sending work before the listener closes.
        self.app.set_ready(false);
        let delay = Duration::from_millis(self.app.config.shutdown_delay_ms);
        if !delay.is_zero() {
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "shutting down: not ready, still serving"
            );
            tokio::time::sleep(delay).await;
        }
        self.app.begin_shutdown();
        let deadline = tokio::time::Instant::now() + WS_DRAIN;
        while self.app.ws_connections.open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.task.await;
    }
}

/// Opens the store in `config.data_dir`, binds `config.listen` and serves in a background task.
pub async fn start(config: Config, store: Option<Store>) -> anyhow::Result<RunningServer> {
    config.validate()?;
    let store = match store {
        Some(s) => s,
        None => {
            let dir = config.data_dir.clone();
            let opts = config.store_options();
            tokio::task::spawn_blocking(move || Store::open(&dir, &opts)).await??
        }
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    start_on(listener, config, store).await
}

/// Like [`start`] on a listener the caller bound already (`serve` binds before it touches the
/// data directory, so a busy port fails before anything is created or printed).
pub async fn start_on(
    listener: TcpListener,
    config: Config,
    store: Store,
) -> anyhow::Result<RunningServer> {
    config.validate()?;
    let addr = listener.local_addr()?;
    let app = App::new(config, store, crate::telemetry::install_metrics())?;
    crate::native::workers::spawn(
        app.store.clone(),
        app.events.clone(),
        app.config.job_retry(),
        app.shutdown_signal(),
    );
    crate::store::wal::spawn(app.store.clone(), app.shutdown_signal());
    crate::state::spawn_maintenance(app.bridge.state().clone(), app.shutdown_signal());
    if app.config.backend == crate::config::BackendKind::Embedded {
        // In upstream mode the upstream stores subscriptions and delivers.
        let worker = crate::webhooks::worker::Worker::new(app.store.clone(), &app.config.webhooks)?;
        crate::webhooks::worker::spawn(worker, app.shutdown_signal());
    }
    let task = tokio::spawn(serve(
        app.clone(),
        listener,
        wait_for(app.shutdown_signal()),
    ));
    Ok(RunningServer { addr, app, task })
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Serves `app` on `listener` until `shutdown` completes. Readiness turns false as soon as
/// shutdown starts, so load balancers stop sending new work while in-flight requests drain.
pub async fn serve(
    app: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = crate::http::build_router(app.clone());
    app.set_ready(true);
    let app2 = app.clone();
    // Voice turns are small request/reply exchanges: Nagle's algorithm would hold pipelined
    // WebSocket replies back for a delayed ACK (~40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        app2.begin_shutdown();
        tracing::info!("shutting down: draining in-flight requests");
    })
    .await
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
