//! The control plane's credentials, made fresh at every start: a cluster CA, the API server's
//! serving certificate, the service-account signing key and one bearer token per identity.
//! `openssl` (always on Debian) does the cryptography.

use std::{
    fmt::Write as _,
    io::Read,
    path::{Path, PathBuf},
    process::Command,
};

use crate::Error;

/// Names the API server's certificate must carry: how clients inside a cluster reach it, and the
/// loopback addresses the host processes use.
const APISERVER_NAMES: &str = "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1";

/// One client of the API server: its user name, groups and bearer token.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: &'static str,
    pub groups: &'static [&'static str],
    pub token: String,
}

/// The files and tokens the control plane starts with.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
    pub tokens_file: PathBuf,
    pub identities: Vec<Identity>,
}

/// Everyone who talks to the API server. The administrator is what `kubectl` (the tests) and
/// Dapr's control plane use; the controller manager and the scheduler have the identities the
/// API server's bootstrap RBAC grants their roles to; kwok stands in for the kubelets.
const IDENTITIES: [(&str, &[&str]); 4] = [
    ("admin", &["system:masters"]),
    ("system:kube-controller-manager", &[]),
    ("system:kube-scheduler", &[]),
    ("kwok", &["system:masters"]),
];

impl Identity {
    fn new((user, groups): &(&'static str, &'static [&'static str])) -> Result<Self, Error> {
        let token = random_token()?;
        Ok(Self {
            user,
            groups,
            token,
        })
    }
}

impl Pki {
    /// Creates everything under `dir` (which must exist).
    pub fn create(dir: &Path) -> Result<Self, Error> {
        let file = |name: &str| dir.join(name);
        let identities = IDENTITIES
            .iter()
            .map(Identity::new)
            .collect::<Result<_, _>>()?;
        let pki = Self {
            ca_cert: file("ca.crt"),
            apiserver_cert: file("apiserver.crt"),
            apiserver_key: file("apiserver.key"),
            service_account_key: file("sa.key"),
            service_account_pub: file("sa.pub"),
            tokens_file: file("tokens.csv"),
            identities,
        };
        let config = file("openssl.cnf");
        std::fs::write(&config, openssl_config())
            .map_err(Error::io("the openssl configuration"))?;
        let ca_key = file("ca.key");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let req = ["req", "-x509", "-days", "2", "-config", &path(&config)];
        let ca = [
            "-extensions",
            "ca",
            "-subj",
            "/CN=task-api local cluster CA",
        ];
        let ca_out = ["-keyout", &path(&ca_key), "-out", &path(&pki.ca_cert)];
        openssl(&[&req[..], &ec, &ca, &ca_out].concat())?;
        let server = ["-extensions", "server", "-subj", "/CN=kube-apiserver"];
        let signer = ["-CA", &path(&pki.ca_cert), "-CAkey", &path(&ca_key)];
        let key = path(&pki.apiserver_key);
        let server_out = ["-keyout", &key, "-out", &path(&pki.apiserver_cert)];
        openssl(&[&req[..], &ec, &server, &signer, &server_out].concat())?;
        let sa_key = path(&pki.service_account_key);
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &sa_key,
        ])?;
        let sa_pub = path(&pki.service_account_pub);
        openssl(&["pkey", "-in", &sa_key, "-pubout", "-out", &sa_pub])?;
        std::fs::write(&pki.tokens_file, pki.tokens_csv()).map_err(Error::io("the token file"))?;
        Ok(pki)
    }

    /// The token of `user`.
    pub fn token(&self, user: &str) -> &str {
        self.identities
            .iter()
            .find(|identity| identity.user == user)
            .map(|identity| identity.token.as_str())
            .unwrap_or_default()
    }

    /// The API server's static token file: token,user,uid,"groups".
    fn tokens_csv(&self) -> String {
        let mut out = String::new();
        for (uid, identity) in self.identities.iter().enumerate() {
            let _ = writeln!(
                out,
                "{},{},{},\"{}\"",
                identity.token,
                identity.user,
                uid + 1,
                identity.groups.join(",")
            );
        }
        out
    }
}

fn openssl_config() -> String {
    format!(
        "[req]\ndistinguished_name = dn\n[dn]\n\
         [ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         [server]\nbasicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = {APISERVER_NAMES}\n"
    )
}

fn path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn openssl(args: &[&str]) -> Result<(), Error> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .map_err(|source| Error::NotRunnable {
            what: "openssl",
            program: "openssl".into(),
            install: "apt-get install -y openssl".into(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Io {
        what: format!("the control plane's credentials (openssl {})", args[0]),
        source: std::io::Error::other(String::from_utf8_lossy(&output.stderr).into_owned()),
    })
}

/// 32 hex digits from the kernel's random source.
fn random_token() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(Error::io("a random token"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
