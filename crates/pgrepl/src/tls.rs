//! TLS with rustls: the certificate policy for each `sslmode`.

use crate::config::{Config, SslMode};
use crate::ReplError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_roots(config: &Config) -> Result<Option<RootCertStore>, ReplError> {
    let path = match &config.ssl_root_cert {
        Some(p) => p.clone(),
        None => match std::env::var_os("HOME") {
            Some(h) => std::path::Path::new(&h).join(".postgresql/root.crt"),
            None => return Ok(None),
        },
    };
    if config.ssl_root_cert.is_none() && !path.exists() {
        return Ok(None);
    }
    let pem =
        std::fs::read(&path).map_err(|e| ReplError::Tls(format!("cannot read sslrootcert {}: {e}", path.display())))?;
    let mut store = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| ReplError::Tls(format!("sslrootcert {} is not valid PEM: {e}", path.display())))?;
        store
            .add(cert)
            .map_err(|e| ReplError::Tls(format!("sslrootcert {}: bad certificate: {e}", path.display())))?;
    }
    if store.is_empty() {
        return Err(ReplError::Tls(format!(
            "sslrootcert {} holds no certificate",
            path.display()
        )));
    }
    Ok(Some(store))
}

/// Runs the TLS handshake on `tcp` with the policy `config.ssl_mode` asks for.
pub(crate) async fn handshake(
    tcp: TcpStream,
    host: &str,
    config: &Config,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ReplError> {
    let roots = load_roots(config)?;
    let verifier: Arc<dyn ServerCertVerifier> = match (config.ssl_mode, roots) {
        (SslMode::VerifyFull, Some(r)) => web_pki(r)?,
        (SslMode::VerifyCa | SslMode::Require, Some(r)) => Arc::new(ChainOnly(web_pki(r)?)),
        (SslMode::VerifyFull | SslMode::VerifyCa, None) => {
            return Err(ReplError::Tls(format!(
                "sslmode={} needs trusted root certificates: set sslrootcert to the CA's PEM file",
                config.ssl_mode
            )))
        }
        _ => Arc::new(NoVerification(provider())),
    };
    let tls_config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ReplError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| ReplError::Tls(format!("{host:?} is not a valid TLS server name")))?;
    TlsConnector::from(Arc::new(tls_config))
        .connect(name, tcp)
        .await
        .map_err(|e| ReplError::Tls(format!("handshake with {} failed: {e}", config.target())))
}

fn web_pki(roots: RootCertStore) -> Result<Arc<dyn ServerCertVerifier>, ReplError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map(|v| v as Arc<dyn ServerCertVerifier>)
        .map_err(|e| ReplError::Tls(e.to_string()))
}

/// `sslmode=require` without a root certificate: encrypt, but trust any certificate, like libpq.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
