//! Authentication (trust, md5, SCRAM-SHA-256) and TLS (`sslmode=require`, `verify-full`) of the
//! replication connection, on a cluster of its own whose pg_hba.conf the test rewrites.

mod common;

use pgoutput::Lsn;
use pgrepl::{Config, ReplError, ReplicationClient, SslMode};
use pgtest::Cluster;

const HBA: &[&str] = &[
    "local all all trust",
    "host all postgres 127.0.0.1/32 trust",
    "host all trustuser 127.0.0.1/32 trust",
    "host all md5user 127.0.0.1/32 md5",
    "host all scramuser 127.0.0.1/32 scram-sha-256",
    "hostssl all ssluser 127.0.0.1/32 scram-sha-256",
    "hostnossl all ssluser 127.0.0.1/32 reject",
];

fn cfg(c: &Cluster, user: &str, password: Option<&str>, sslmode: &str) -> Config {
    let mut s = format!(
        "host=127.0.0.1 port={} user={user} dbname=postgres sslmode={sslmode}",
        c.port()
    );
    if let Some(p) = password {
        s.push_str(&format!(" password='{p}'"));
    }
    Config::parse(&s).unwrap()
}

async fn can_replicate(config: &Config) -> Result<bool, ReplError> {
    let mut client = ReplicationClient::connect(config).await?;
    let id = client.identify_system().await?;
    let tls = client.is_tls();
    client.close().await;
    assert!(id.xlog_pos > Lsn::INVALID);
    Ok(tls)
}

fn tls_material() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "graphsync test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn trust_md5_scram_and_tls() {
    let c = Cluster::start().expect("start cluster");
    c.psql(
        "postgres",
        "CREATE ROLE trustuser LOGIN REPLICATION;
         SET password_encryption = 'md5';
         CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5 s3cret';
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE scramuser LOGIN REPLICATION PASSWORD 'scr''am s3cret';
         CREATE ROLE ssluser LOGIN REPLICATION PASSWORD 'tls s3cret';",
    );
    let (ca, cert, key) = tls_material();
    c.write_data_file("server.crt", cert.as_bytes());
    c.write_data_file("server.key", key.as_bytes());
    c.set_extra_conf("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    c.set_hba(HBA);

    assert!(!can_replicate(&cfg(&c, "trustuser", None, "disable")).await.unwrap());
    assert!(!can_replicate(&cfg(&c, "md5user", Some("md5 s3cret"), "disable"))
        .await
        .unwrap());
    assert!(
        !can_replicate(&cfg(&c, "scramuser", Some("scr\\'am s3cret"), "disable"))
            .await
            .unwrap()
    );

    // Wrong passwords: the server's typed refusal, and the secret appears nowhere.
    for (user, pw) in [("md5user", "wrong-md5-pw"), ("scramuser", "wrong-scram-pw")] {
        let config = cfg(&c, user, Some(pw), "disable");
        let err = ReplicationClient::connect(&config).await.unwrap_err();
        assert_eq!(err.code(), Some(pgrepl::sqlstate::INVALID_PASSWORD), "{err:?}");
        assert!(!format!("{err} {err:?} {config:?} {config}").contains(pw));
    }
    // No password at all: a clear error naming the fix.
    let err = ReplicationClient::connect(&cfg(&c, "scramuser", None, "disable"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplError::Auth(_)) && err.to_string().contains("PGPASSWORD"),
        "{err}"
    );

    // TLS: require encrypts without checking the certificate; verify-full checks it.
    assert!(can_replicate(&cfg(&c, "ssluser", Some("tls s3cret"), "require"))
        .await
        .unwrap());
    assert!(can_replicate(&cfg(&c, "ssluser", Some("tls s3cret"), "prefer"))
        .await
        .unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let mut full = cfg(&c, "ssluser", Some("tls s3cret"), "verify-full");
    full.ssl_root_cert = Some(ca_path.clone());
    assert!(can_replicate(&full).await.unwrap());
    // A different CA is refused.
    let (other_ca, _, _) = tls_material();
    let other_path = dir.path().join("other.pem");
    std::fs::write(&other_path, other_ca).unwrap();
    full.ssl_root_cert = Some(other_path);
    let err = ReplicationClient::connect(&full).await.unwrap_err();
    assert!(matches!(err, ReplError::Tls(_)), "{err:?}");
    // Plain connections for the TLS-only user are rejected by pg_hba.
    let err = ReplicationClient::connect(&cfg(&c, "ssluser", Some("tls s3cret"), "disable"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(pgrepl::sqlstate::INVALID_AUTHORIZATION), "{err:?}");

    // With ssl off, sslmode=require is refused and prefer falls back to plain text.
    c.set_extra_conf("ssl = off\n");
    c.restart();
    let err = ReplicationClient::connect(&cfg(&c, "trustuser", None, "require"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplError::Tls(_)) && err.to_string().contains("sslmode=require"),
        "{err}"
    );
    assert!(!can_replicate(&cfg(&c, "trustuser", None, "prefer")).await.unwrap());
    assert_eq!(cfg(&c, "trustuser", None, "prefer").ssl_mode, SslMode::Prefer);

    // Unix socket connections work too.
    let unix = Config::parse(&format!(
        "host={} port={} user=trustuser dbname=postgres",
        c.socket_dir().display(),
        c.port()
    ))
    .unwrap();
    assert!(!can_replicate(&unix).await.unwrap());
}
