package config

// EnvNames lists every environment variable Load reads: BRIDGE_CONFIG, each
// setting's name and, for a secret, its <NAME>_FILE. Deployment files are
// checked against it (deploy/deploy_test.go).
func EnvNames() []string {
	names := []string{"BRIDGE_CONFIG"}
	for _, s := range Settings() {
		names = append(names, s.Env)
		if s.Secret {
			names = append(names, s.Env+"_FILE")
		}
	}
	return names
}
