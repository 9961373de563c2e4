//! A throwaway PKI for tests: a CA, the collector's server certificate and a filter's
//! client certificate, written as PEM files.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// The name the collector's certificate carries and Envoy checks (SNI and SAN).
pub const COLLECTOR_NAME: &str = "collector.flowguard.test";

pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// A fresh CA named `name` and its two leaf certificates, in `dir`.
    pub fn generate(dir: &Path, name: &str) -> Result<Pki, String> {
        let err = |e: rcgen::Error| e.to_string();
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(err)?;

        let leaf =
            |san: &str, usage: ExtendedKeyUsagePurpose| -> Result<(String, String), String> {
                let key = KeyPair::generate().map_err(err)?;
                let mut p = CertificateParams::new(vec![san.to_owned()]).map_err(err)?;
                p.distinguished_name.push(DnType::CommonName, san);
                p.extended_key_usages = vec![usage];
                let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;
                Ok((cert.pem(), key.serialize_pem()))
            };
        let (server_cert, server_key) = leaf(COLLECTOR_NAME, ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_cert, client_key) =
            leaf("filter.flowguard.test", ExtendedKeyUsagePurpose::ClientAuth)?;

        let write = |file: &str, pem: &str| -> Result<PathBuf, String> {
            let path = dir.join(file);
            std::fs::write(&path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(path)
        };
        Ok(Pki {
            ca: write("ca.pem", &ca_cert.pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server.key", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client.key", &client_key)?,
        })
    }
}
