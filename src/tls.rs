//! rustls configurations, built once at load time and shared by every connection: clients for
//! upstreams (webpki-roots, an extra root CA from a PEM file, or no verification at all) and
//! servers for HTTPS listeners (a certificate per listener, chosen by SNI; optional client
//! certificates).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::sync::Arc;

/// How to verify one upstream's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// A PEM file with extra trusted root certificates.
    pub root: Option<String>,
    /// The name to send as SNI and to verify the certificate against, instead of the URL's host.
    pub hostname: Option<String>,
    /// Accept any certificate (logged loudly at startup).
    pub insecure: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Builds the client configuration for `opts`. Errors name the file or the reason.
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut cfg = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &opts.root {
            add_roots(&mut roots, path)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    // HTTP/1.1 only: the upstream client speaks nothing else.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// One HTTPS listener's certificate: PEM files, and the host name it serves (None: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerCert {
    pub hostname: Option<String>,
    pub cert: String,
    pub key: String,
}

/// The server configuration of one port: its listeners' certificates (chosen by the SNI the
/// client sends), HTTP/1.1 by ALPN, and client certificates verified against `client_roots`
/// when given (required then). Errors name the file and the reason; `Err((i, why))` says
/// which certificate failed.
pub fn server_config(
    certs: &[ListenerCert],
    client_roots: Option<&str>,
) -> Result<Arc<ServerConfig>, (Option<usize>, String)> {
    let provider = provider();
    let mut keys = Vec::new();
    for (i, c) in certs.iter().enumerate() {
        let key = certified_key(c, &provider).map_err(|e| (Some(i), e))?;
        keys.push((c.hostname.clone(), Arc::new(key)));
    }
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| (None, format!("TLS setup: {e}")))?;
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            add_roots(&mut roots, path).map_err(|e| (None, e))?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| (None, format!("{path}: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(BySni(keys)));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The certificates of a PEM file (`-----BEGIN CERTIFICATE-----` blocks, parsed by rustls).
fn read_certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    pem_certificates(&pem).map_err(|why| format!("{path}: {why}"))
}

/// The DER certificates in a PEM text; at least one.
fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{e:?}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

/// Adds the CA certificates of a PEM file to `roots`.
fn add_roots(roots: &mut RootCertStore, path: &str) -> Result<(), String> {
    for c in read_certificates(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{path}: not a usable root certificate: {e}"))?;
    }
    Ok(())
}

/// A certificate chain and its private key, checked to belong together.
fn certified_key(c: &ListenerCert, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = read_certificates(&c.cert)?;
    let pem = std::fs::read(&c.key).map_err(|e| format!("cannot read {}: {e}", c.key))?;
    // The key's bytes are never part of a message, only the file's name.
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| format!("{}: no PEM private key found", c.key))?;
    let key = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{}: unusable private key: {e}", c.key))?;
    let ck = CertifiedKey::new(chain, key);
    ck.keys_match()
        .map_err(|e| format!("{} does not match {}: {e}", c.key, c.cert))?;
    Ok(ck)
}

/// Picks the certificate of the listener whose hostname the client asked for (exact, or
/// `*.suffix` for one label); without a match, the listener with no hostname, else the first.
#[derive(Debug)]
struct BySni(Vec<(Option<String>, Arc<CertifiedKey>)>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let asked = hello.server_name().map(str::to_ascii_lowercase);
        let named = asked.as_deref().and_then(|name| {
            self.0.iter().find(|(h, _)| {
                h.as_deref()
                    .is_some_and(|h| crate::config::host_matches(h, name))
            })
        });
        named
            .or_else(|| self.0.iter().find(|(h, _)| h.is_none()))
            .or_else(|| self.0.first())
            .map(|(_, k)| Arc::clone(k))
    }
}

/// The name to verify: the override, else the URL's host.
pub fn server_name(host: &str, opts: &TlsOptions) -> Result<ServerName<'static>, String> {
    let name = opts.hostname.as_deref().unwrap_or(host);
    ServerName::try_from(name.to_string())
        .map_err(|_| format!("{name:?} is not a valid TLS server name"))
}

/// `insecure: true`: every certificate is accepted; signatures are still checked so the
/// handshake itself stays sound.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One DER element at the start of `der`: (tag, contents, the rest). Definite lengths only.
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subject common name (CN) of a DER certificate (a verified client certificate names
/// its principal by it), or None when it has none.
pub fn certificate_subject(der: &[u8]) -> Option<String> {
    let (_, cert, _) = der_element(der)?;
    let (_, tbs, _) = der_element(cert)?;
    let mut rest = tbs;
    // [0] version (optional), serial, signature algorithm, issuer, validity, subject.
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        rest = der_element(rest)?.2;
    }
    let (_, mut rdns, _) = der_element(rest)?;
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    while !rdns.is_empty() {
        let (_, set, next) = der_element(rdns)?;
        rdns = next;
        let (_, attr, _) = der_element(set)?;
        let (_, oid, value) = der_element(attr)?;
        if oid == CN {
            let (_, text, _) = der_element(value)?;
            return String::from_utf8(text.to_vec()).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem() {
        let pem = "junk\n-----BEGIN CERTIFICATE-----\naGVs\nbG8=\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_certificates(pem.as_bytes()).map(|c| c.len()), Ok(1));
        assert!(pem_certificates(b"nothing").is_err());
    }

    #[test]
    fn configs_build() {
        assert!(client_config(&TlsOptions::default()).is_ok());
        assert!(client_config(&TlsOptions {
            insecure: true,
            ..TlsOptions::default()
        })
        .is_ok());
        let missing = client_config(&TlsOptions {
            root: Some("/nonexistent.pem".into()),
            ..TlsOptions::default()
        });
        assert!(missing.is_err_and(|e| e.contains("/nonexistent.pem")));
        assert!(server_name("example.com", &TlsOptions::default()).is_ok());
    }
}
