# Consul for docker-compose.yml: a single server (`agent -server -bootstrap-expect=1` in the
# compose file), reachable over HTTPS only, with verified client certificates. The certificates
# come from the `certs` service's volume, mounted at /certs. No ACLs: see the README.

datacenter  = "dc1"
node_name   = "consul"
client_addr = "0.0.0.0"

ports {
  # No plain HTTP: twinreg, the health check and `consul` CLI calls use HTTPS.
  http  = -1
  https = 8501
}

tls {
  defaults {
    ca_file   = "/certs/ca.pem"
    cert_file = "/certs/consul/server.pem"
    key_file  = "/certs/consul/server-key.pem"
    # Every HTTPS caller must present a certificate issued by ca_file.
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    # The server certificate names server.dc1.consul (`twinreg certs compose` issues it so).
    verify_server_hostname = true
  }
}
