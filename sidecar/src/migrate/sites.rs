//! The proxy's side of each migrated service: a site block (Caddy), a
//! server block (nginx) or a router (Traefik) per host, protected by the
//! rendered snippets and proxying to the upstream the oauth2-proxy had.

/// Caddy site blocks; `oidc-edge.caddy` sits beside them.
pub fn caddy(sites: &[(String, String)]) -> String {
    let mut out = String::from(
        "# Site blocks for the migrated services, protected by oidc-edge.caddy (`oidc-edge render caddy`).\nimport oidc-edge.caddy\n",
    );
    for (host, upstream) in sites {
        out.push_str(&format!(
            "\n{host} {{\n\timport oidc_edge_endpoints\n\thandle {{\n\t\timport oidc_edge_protect\n\t\treverse_proxy {}\n\t}}\n}}\n",
            upstream.trim_end_matches('/')
        ));
    }
    out
}

/// nginx server blocks, included in `http {}` after `oidc-edge/http.conf`.
pub fn nginx(sites: &[(String, String)]) -> String {
    let mut out = String::from(
        "# Server blocks for the migrated services. Include inside http {}, after\n\
         # oidc-edge/http.conf (`oidc-edge render nginx` writes oidc-edge/). Add the\n\
         # listen and TLS lines you serve these hosts with today.\n",
    );
    for (host, upstream) in sites {
        out.push_str(&format!(
            "\nserver {{\n    listen 80;\n    server_name {host};\n    include oidc-edge/sidecar.conf;\n\n    location / {{\n\
             \x20       include oidc-edge/protect.conf;\n        include oidc-edge/upstream-headers.conf;\n\
             \x20       proxy_http_version 1.1;\n        proxy_set_header Connection \"\";\n        proxy_pass {};\n    }}\n}}\n",
            upstream.trim_end_matches('/')
        ));
    }
    out
}

/// Traefik routers for its file provider, beside `oidc-edge.yml`.
pub fn traefik(sites: &[(String, String)]) -> String {
    let name = |host: &str| host.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect::<String>();
    let mut routers = String::new();
    let mut services = String::new();
    for (host, upstream) in sites {
        let n = name(host);
        routers.push_str(&format!("    {n}:\n      rule: \"Host(`{host}`)\"\n      service: {n}\n      middlewares: [oidc-edge-protect]\n"));
        services.push_str(&format!("    {n}:\n      loadBalancer:\n        servers:\n          - url: \"{upstream}\"\n"));
    }
    format!(
        "# Routers for the migrated services, protected by oidc-edge.yml (`oidc-edge render traefik`);\n\
         # give Traefik's file provider both files.\nhttp:\n  routers:\n{routers}  services:\n{services}"
    )
}
