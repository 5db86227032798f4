//! `mailgate serve`: open the store, bind every listener, run until SIGINT/SIGTERM, then stop
//! accepting, let in-flight requests finish (bounded), flush the store and exit.

use crate::admin;
use crate::config::Config;
use crate::files;
use crate::listener::{self, ListenerContext};
use crate::relay::Relay;
use crate::routing::RouteChooser;
use crate::tls;
use anyhow::Context;
use mailgate_core::destinations::Destinations;
use mailgate_core::discovery::Discovery;
use mailgate_core::relay::Transport;
use mailgate_core::store::StoreLocation;
use mailgate_core::Address;
use mailgate_core::{Core, Metrics, Policy};
use mailgate_immp::federation::{Federation, ImmpRoute, ImmpTransport};
use mailgate_immp::session::DomainKey;
use mailgate_immp::ImmpServer;
use mailgate_mmtp::peers::{MmtpPeers, MmtpRoute};
use mailgate_mmtp::relay::MmtpTransport;
use mailgate_mmtp::MmtpServer;
use mailgate_smtp::dkim::DkimKeys;
use mailgate_smtp::relay::{RelaySettings, SmtpRoute, SmtpTransport};
use mailgate_smtp::SmtpServer;
use mailgate_xhmtp::access::AccessCodes;
use mailgate_xhmtp::config::XhmtpRoute;
use mailgate_xhmtp::discovery::Locator;
use mailgate_xhmtp::fetcher::Fetcher;
use mailgate_xhmtp::http::HttpClient;
use mailgate_xhmtp::notifier::XhmtpTransport;
use mailgate_xhmtp::Xhmtp;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Open the store and build the core for `config`.
pub async fn open_core(config: &Config) -> anyhow::Result<Arc<Core>> {
    files::private_dir(&config.data_dir)?;
    let metrics = Arc::new(Metrics::new());
    let location: StoreLocation = config
        .store_url()
        .parse()
        .map_err(|e| anyhow::anyhow!("[store] url: {e}"))?;
    let store = location
        .open(metrics.clone(), config.store.pool_size)
        .await
        .with_context(|| format!("cannot open the store at {location}"))?;
    let mut policy = Policy::new(&config.domains);
    policy.max_message_size = config.max_message_size;
    policy.max_recipients = config.max_recipients;
    let budget = mailgate_core::MemoryBudget::new(
        config.limits.body_budget_bytes,
        Duration::from_millis(config.limits.body_budget_wait_ms),
    );
    let core = Core::new(store, policy, metrics)
        .with_rate_limit(config.limits.rate_per_sec, config.limits.rate_burst)
        .with_budget(budget)
        .with_destinations(
            Destinations::new(config.outbound.deny.clone()).deny_addresses(
                config
                    .listeners()
                    .into_iter()
                    .map(|(a, _)| a.ip())
                    .filter(|ip| !ip.is_unspecified()),
            ),
        )
        .with_login_limits(config.limits.login_limits())
        .with_secret(Arc::new(mailgate_immp::auth::ImmpSecret));
    Ok(Arc::new(core))
}

/// The gateway's own OpenPGP key, published to `KEY REQUEST <domain>`: one for the site,
/// kept in the store (every node sharing it signs with the same key) and copied to
/// `<data_dir>/domain-key.asc`.
pub async fn domain_key(config: &Config, core: &Core) -> anyhow::Result<DomainKey> {
    let text = site_secret(config, core, "domain-key.asc", "immp.domain-key", || {
        let who = Address::new(
            mailgate_core::address::MAILER_DAEMON,
            config.primary_domain(),
        )?;
        let (secret, _) = mailgate_core::pgp::generate_key(&who)?;
        Ok(secret.into_bytes())
    })
    .await?;
    let text = String::from_utf8(text).context("the stored domain key is not text")?;
    let key = mailgate_core::pgp::public_key(&text)
        .context("the stored domain key is not an OpenPGP key")?;
    Ok(DomainKey {
        fingerprint: key.fingerprint,
        armored: key.armored,
    })
}

/// A secret the whole site shares: the store's (the first node to start decides), else the
/// one in `<data_dir>/<file>` from before the store kept it, else a new one from `generate`.
/// The file is kept as a copy of the store's value (mode 0600).
async fn site_secret(
    config: &Config,
    core: &Core,
    file: &str,
    name: &str,
    generate: impl FnOnce() -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<Vec<u8>> {
    let path = config.data_dir.join(file);
    let local = match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let candidate = match &local {
        Some(bytes) => bytes.clone(),
        None => generate()?,
    };
    let value = core
        .store
        .site_secret(name, &candidate)
        .await
        .with_context(|| format!("cannot keep the site's {name} in the store"))?;
    if local.as_ref() != Some(&value) {
        files::private_dir(&config.data_dir)?;
        files::write_private(&path, &value)?;
        if local.is_none() && value == candidate {
            tracing::info!(path = %path.display(), name, "generated the site's secret");
        }
    }
    Ok(value)
}

/// The XHMTP front-end's state: the site's access-code key, peer discovery, outbound HTTP;
/// `port` is the bound HTTP port.
async fn xhmtp_state(
    config: &Config,
    port: u16,
    core: &Arc<Core>,
    dns: Option<Arc<dyn Discovery>>,
    trust: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Arc<Xhmtp>> {
    let key = access_key(config, core).await?;
    let mut x = config.xhmtp.clone();
    x.listen.set_port(port);
    let routes = config
        .routes("xhmtp")
        .map(|r| XhmtpRoute {
            domain: r.domain.clone(),
            host: r.host.clone(),
            port: r.port,
            https: r.tls,
            prefix: r.prefix.clone(),
        })
        .collect();
    let locator = Locator::new(routes, dns, x.outbound_https);
    let http = HttpClient::new(
        trust,
        x.outbound_ip,
        Duration::from_secs(x.http_timeout_secs),
        // A message as JSON: base64 parts grow by a third, plus the envelope.
        config
            .max_message_size
            .saturating_mul(2)
            .saturating_add(64 * 1024),
    );
    Ok(Xhmtp::new(
        core.clone(),
        x,
        AccessCodes::new(key),
        locator,
        http,
        config.primary_domain(),
    ))
}

/// `(domain, protocol)` of every configured route.
/// The SMTP relay transport: `[[route]] protocol = "smtp"`, MX targets through `dns`, DKIM
/// keys in `<data_dir>/dkim/`.
fn smtp_transport(
    config: &Config,
    dns: Option<Arc<dyn Discovery>>,
    trust: Option<Arc<rustls::ClientConfig>>,
) -> SmtpTransport {
    let routes = config
        .routes("smtp")
        .map(|r| SmtpRoute {
            domain: r.domain.clone(),
            host: r.host.clone(),
            port: r.port,
            tls: r.tls,
        })
        .collect();
    SmtpTransport::new(
        routes,
        dns,
        trust,
        Arc::new(DkimKeys::new(
            config.dkim_dir(),
            config.smtp.dkim_selector.clone(),
        )),
        RelaySettings {
            hostname: config.primary_domain().to_owned(),
            mx_port: config.smtp.mx_port,
            require_tls: config.smtp.require_tls,
            timeout: Duration::from_secs(config.limits.read_timeout_secs.clamp(1, 300)),
            local_domains: config.domains.clone(),
        },
    )
}

fn static_routes(config: &Config) -> Vec<(String, String)> {
    config
        .route
        .iter()
        .map(|r| (r.domain.clone(), r.protocol.clone()))
        .collect()
}

/// The XHMTP access-code key: 32 random bytes shared by the site ([`site_secret`]).
async fn access_key(config: &Config, core: &Core) -> anyhow::Result<[u8; 32]> {
    let raw = site_secret(config, core, "xhmtp-access.key", "xhmtp.access-key", || {
        Ok(rand::random::<[u8; 32]>().to_vec())
    })
    .await?;
    raw.try_into()
        .map_err(|_| anyhow::anyhow!("the XHMTP access key must be exactly 32 bytes"))
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key} = {addr}: cannot listen"))?;
    let local = l.local_addr()?;
    // A fixed, parseable line per listener: operators and tests read the bound port here.
    println!("mailgate: {key} listening on {local}");
    // The line above is the record (and `docker logs` shows it once).
    tracing::debug!(%local, key, "listening");
    Ok(l)
}

/// Run the gateway until a stop signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let core = open_core(&config).await?;
    // Leases of a previous run (killed mid-delivery) end now: those entries are due again.
    let released = core.store.release_leases().await?;
    if released > 0 {
        tracing::info!(
            released,
            "queue entries in flight at the last stop are due again"
        );
    }
    let server_tls = tls::server_config(&config)?;
    let acceptor = TlsAcceptor::from(server_tls.any);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    listener::raise_fd_limit(config.fd_need());
    let ctx = ListenerContext {
        metrics: core.metrics.clone(),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        limits: config.limits.conn_limits(),
    };
    // The admin listener has its own small budget, whatever the public ones hold.
    let admin_ctx = ListenerContext {
        limits: listener::ConnLimits {
            max_connections: config.admin.max_connections,
            max_per_ip: config.admin.max_connections,
            max_per_prefix: config.admin.max_connections,
            ..ctx.limits
        },
        ..ctx.clone()
    };
    let read_timeout = config.limits.read_timeout();
    let trust = if config.tls.trust.is_empty() {
        None
    } else {
        // Files that do not exist yet are read when they appear (crate::trust).
        Some(crate::trust::client_config(&config.tls.trust)?)
    };
    let immp_routes = config
        .routes("immp")
        .map(|r| ImmpRoute {
            domain: r.domain.clone(),
            address: match r.host.parse::<std::net::Ipv6Addr>() {
                Ok(v6) => format!("[{v6}]:{}", r.port),
                Err(_) => format!("{}:{}", r.host, r.port),
            },
            server_name: Some(r.tls_name()),
        })
        .collect();
    let mut federation = Federation::new(immp_routes, trust.clone());
    let dns: Option<Arc<dyn Discovery>> = match crate::dns::DnsDiscovery::new(
        &config.dns.servers,
        Duration::from_secs(config.dns.timeout_secs),
    ) {
        Ok(dns) => Some(Arc::new(dns)),
        Err(e) => {
            tracing::warn!(error = %e, "no DNS resolver: only configured routes are used");
            None
        }
    };
    if let Some(dns) = &dns {
        federation = federation.with_discovery(dns.clone());
    }
    let mut servers = tokio::task::JoinSet::new();

    let admin_app = admin::router(core.clone());
    let l = bind(config.admin.listen, "admin.listen").await?;
    servers.spawn(listener::serve("admin", l, None, admin_ctx, move |c| {
        admin::serve_http(admin_app.clone(), c, read_timeout)
    }));

    let mmtp_peers = Arc::new(
        MmtpPeers::new(
            config
                .routes("mmtp")
                .map(|r| MmtpRoute {
                    domain: r.domain.clone(),
                    host: r.host.clone(),
                    port: r.port,
                    tls: r.tls,
                })
                .collect(),
            dns.clone(),
            trust.clone(),
            config.mmtp.outbound_tls,
        )
        .with_destinations(core.destinations.clone())
        .with_key_ttl(Duration::from_secs(config.mmtp.remote_key_ttl_secs)),
    );
    if config.mmtp.enabled {
        let mmtp = Arc::new(
            MmtpServer::new(core.clone(), config.mmtp.clone(), read_timeout)
                .with_peers(mmtp_peers.clone()),
        );
        let l = bind(config.mmtp.listen, "mmtp.listen").await?;
        let m = mmtp.clone();
        servers.spawn(listener::serve("mmtp", l, None, ctx.clone(), move |c| {
            let m = m.clone();
            async move { m.handle(c.stream, c.peer, c.tls, c.shutdown, c.state).await }
        }));
        if let Some(addr) = config.mmtp.tls_listen {
            let l = bind(addr, "mmtp.tls_listen").await?;
            servers.spawn(listener::serve(
                "mmtp",
                l,
                Some(acceptor.clone()),
                ctx.clone(),
                move |c| {
                    let m = mmtp.clone();
                    async move { m.handle(c.stream, c.peer, c.tls, c.shutdown, c.state).await }
                },
            ));
        }
    }

    if config.immp.enabled {
        let immp = Arc::new(
            ImmpServer::new(
                core.clone(),
                config.primary_domain().to_owned(),
                Some(domain_key(&config, &core).await?),
                acceptor.clone(),
                TlsAcceptor::from(server_tls.tls13),
                read_timeout,
                Duration::from_secs(config.limits.handshake_timeout_secs),
            )
            .with_federation(federation.clone())
            .with_index_page(config.immp.index_page),
        );
        tracker.spawn(immp.clone().show_live_pushes(shutdown.clone()));
        let l = bind(config.immp.listen, "immp.listen").await?;
        servers.spawn(listener::serve("immp", l, None, ctx.clone(), move |c| {
            let i = immp.clone();
            async move { i.handle(c.stream, c.peer, c.shutdown, c.state).await }
        }));
    }

    if config.smtp.enabled {
        let mut smtp = SmtpServer::new(
            core.clone(),
            config.primary_domain(),
            Some(acceptor.clone()),
            &config.smtp,
            read_timeout,
        );
        if config.smtp.verify_senders {
            let timeout = Duration::from_secs(config.dns.timeout_secs);
            let authenticator = mailgate_smtp::auth::authenticator(&config.dns.servers, timeout)
                .map_err(|e| anyhow::anyhow!("smtp: the SPF/DKIM/DMARC resolver: {e}"))?;
            // SPF alone may take up to ten look-ups (RFC 7208 §4.6.4), DKIM and DMARC more.
            smtp = smtp.with_authenticator(Arc::new(authenticator), timeout * 4);
        }
        let smtp = Arc::new(smtp);
        let submission = Arc::new(
            SmtpServer::new(
                core.clone(),
                config.primary_domain(),
                Some(acceptor.clone()),
                &config.smtp,
                read_timeout,
            )
            .for_submission(),
        );
        let listeners = [
            (Some(config.smtp.listen), "smtp.listen", &smtp, None),
            (
                config.smtp.submission_listen,
                "smtp.submission_listen",
                &submission,
                None,
            ),
            (
                config.smtp.submissions_listen,
                "smtp.submissions_listen",
                &submission,
                Some(acceptor.clone()),
            ),
        ];
        for (addr, key, server, implicit_tls) in listeners {
            let Some(addr) = addr else { continue };
            let l = bind(addr, key).await?;
            let server = server.clone();
            servers.spawn(listener::serve(
                "smtp",
                l,
                implicit_tls,
                ctx.clone(),
                move |c| {
                    let s = server.clone();
                    async move { s.handle(c.stream, c.peer, c.tls, c.shutdown, c.state).await }
                },
            ));
        }
    }

    if config.tmtp.enabled {
        let tmtp = Arc::new(mailgate_tmtp::TmtpServer::new(
            core.clone(),
            config.primary_domain(),
            config.tmtp.clone(),
        ));
        tracker.spawn(tmtp.clone().watch_arrivals(shutdown.clone()));
        tracker.spawn(tmtp.clone().watch_presence(shutdown.clone()));
        let l = bind(config.tmtp.listen, "tmtp.listen").await?;
        servers.spawn(listener::serve(
            "tmtp",
            l,
            Some(acceptor.clone()),
            ctx.clone(),
            move |c| {
                let t = tmtp.clone();
                async move { t.handle(c.stream, c.peer, c.shutdown, c.state).await }
            },
        ));
    }

    let mut xhmtp = None;
    if config.xhmtp.enabled {
        let l = bind(config.xhmtp.listen, "xhmtp.listen").await?;
        // The default public URL names the bound port (the configured one may be 0).
        let x = xhmtp_state(
            &config,
            l.local_addr()?.port(),
            &core,
            dns.clone(),
            trust.clone(),
        )
        .await?;
        xhmtp = Some(x.clone());
        let app = mailgate_xhmtp::router(x.clone());
        let a = app.clone();
        servers.spawn(listener::serve("xhmtp", l, None, ctx.clone(), move |c| {
            admin::serve_http(a.clone(), c, read_timeout)
        }));
        if let Some(addr) = config.xhmtp.tls_listen {
            let l = bind(addr, "xhmtp.tls_listen").await?;
            servers.spawn(listener::serve(
                "xhmtp",
                l,
                Some(acceptor.clone()),
                ctx.clone(),
                move |c| admin::serve_http(app.clone(), c, read_timeout),
            ));
        }
        let fetcher = Arc::new(Fetcher::new(
            x.clone(),
            config.relay.backoff(),
            (config.relay.max_age_secs * 1000) as i64,
            Duration::from_millis(config.relay.poll_interval_ms.max(10)),
        ));
        tracker.spawn(fetcher.run(shutdown.clone()));
    }

    let mut transports: Vec<Arc<dyn Transport>> = Vec::new();
    if config.immp.enabled {
        transports.push(Arc::new(ImmpTransport::new(
            core.clone(),
            config.primary_domain().to_owned(),
            federation.clone(),
        )));
    }
    if config.mmtp.enabled {
        transports.push(Arc::new(MmtpTransport::new(mmtp_peers)));
    }
    if let Some(x) = &xhmtp {
        transports.push(Arc::new(XhmtpTransport::new(x.clone())));
    }
    if config.smtp.enabled {
        transports.push(Arc::new(smtp_transport(
            &config,
            dns.clone(),
            trust.clone(),
        )));
    }
    let relay = Arc::new(Relay::new(
        core.clone(),
        transports,
        RouteChooser::new(
            static_routes(&config),
            dns,
            config.relay.preference.clone(),
            Duration::from_secs(config.dns.timeout_secs),
        ),
        config.relay.clone(),
        config.primary_domain(),
    ));
    tracker.spawn(relay.run(shutdown.clone()));

    let stop = stop_signal();
    println!("mailgate: ready");
    tracing::info!(domains = ?config.domains, "mailgate ready");
    stop.await;
    tracing::info!("stopping: no new connections; finishing requests in flight");
    shutdown.cancel();
    while servers.join_next().await.is_some() {}
    tracker.close();
    let grace = Duration::from_secs(config.limits.shutdown_grace_secs);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("some connections did not finish within {grace:?}; closing anyway");
    }
    core.store.close().await?;
    println!("mailgate: stopped");
    tracing::info!("stopped");
    Ok(())
}

/// Install the SIGTERM and SIGINT handlers now — before "ready" is printed, so that a signal
/// sent right after it stops the gateway gracefully instead of killing it — and return a future
/// that resolves on the first of them.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            async fn next(s: std::io::Result<tokio::signal::unix::Signal>) {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = next(term) => {}
                _ = next(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
