package config

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Load builds the config from defaults, the YAML file, the environment and
// the flags that were set, in that order of precedence (last wins), then
// validates it. Every problem is reported at once (errors.Join, one line
// each): first the values that do not parse, else what Validate finds.
// Errors name the setting and never contain a secret value.
func Load(fs *pflag.FlagSet, getenv func(string) string) (Config, error) {
	cfg := Default()
	settings := Settings()
	path := getenv("BRIDGE_CONFIG")
	if f := fs.Lookup("config"); f != nil && f.Changed {
		path = f.Value.String()
	}
	var errs []error
	if path != "" {
		if err := loadFile(&cfg, path, settings); err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range settings {
		errs = append(errs, loadEnv(&cfg, s, getenv)...)
		if f := fs.Lookup(s.Flag()); f != nil && f.Changed {
			if err := s.set(&cfg, f.Value.String()); err != nil {
				errs = append(errs, settingErr("--"+s.Flag(), s, err))
			}
		}
	}
	if len(errs) > 0 {
		return cfg, errors.Join(errs...)
	}
	return cfg, cfg.Validate()
}

// loadEnv sets s from its environment variable and, for a secret, the file
// <ENV>_FILE names (which wins).
func loadEnv(cfg *Config, s Setting, getenv func(string) string) []error {
	var errs []error
	if v := getenv(s.Env); v != "" {
		if err := s.set(cfg, v); err != nil {
			errs = append(errs, settingErr(s.Env, s, err))
		}
	}
	if !s.Secret {
		return errs
	}
	file := getenv(s.Env + "_FILE")
	if file == "" {
		return errs
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return append(errs, fmt.Errorf("%s_FILE: cannot read %s: %v", s.Env, file, errors.Unwrap(err)))
	}
	if err := s.set(cfg, strings.TrimSpace(string(b))); err != nil {
		errs = append(errs, settingErr(s.Env+"_FILE", s, err))
	}
	return errs
}

func settingErr(source string, s Setting, err error) error {
	if s.Secret {
		return fmt.Errorf("%s: invalid value", source)
	}
	return fmt.Errorf("%s: %v", source, err)
}

// loadFile sets every setting the YAML file at path gives, reporting each
// bad entry in the file's order.
func loadFile(cfg *Config, path string, settings []Setting) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %v", err)
	}
	var raw map[string]yaml.Node
	if err := yaml.Unmarshal(b, &raw); err != nil {
		// yaml's own message spans lines ("unmarshal errors:\n  line 1: ..."):
		// keep the one-line error every start-up failure has.
		msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "yaml: unmarshal errors:", "")), " ")
		if strings.Contains(msg, "cannot unmarshal") {
			msg += " (the file must be a mapping of setting: value)"
		}
		return fmt.Errorf("config file %s: %s", path, msg)
	}
	byKey := make(map[string]Setting, len(settings))
	for _, s := range settings {
		byKey[s.Key] = s
		if s.Secret {
			byKey[s.Key+"_file"] = s
		}
	}
	keys := slices.SortedFunc(maps.Keys(raw), func(a, b string) int { return cmp.Compare(raw[a].Line, raw[b].Line) })
	var errs []error
	for _, key := range keys {
		node := raw[key]
		where := fmt.Sprintf("config file %s line %d", path, node.Line)
		s, ok := byKey[key]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: unknown setting %q", where, key))
			continue
		}
		value, err := fileValue(&node, key, s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %v", where, key, err))
			continue
		}
		if err := s.set(cfg, value); err != nil {
			errs = append(errs, settingErr(where+": "+key, s, err))
		}
	}
	return errors.Join(errs...)
}

// fileValue is the text a YAML entry gives its setting: a scalar as it is,
// a list joined, a map (where the setting takes one) as key=value entries,
// and for a <key>_file entry the trimmed contents of the file it names.
func fileValue(node *yaml.Node, key string, s Setting) (string, error) {
	var value string
	switch node.Kind {
	case yaml.ScalarNode:
		value = node.Value
	case yaml.SequenceNode:
		parts := make([]string, 0, len(node.Content))
		for _, c := range node.Content {
			parts = append(parts, c.Value)
		}
		value = strings.Join(parts, cmp.Or(s.mapSep, ","))
	case yaml.MappingNode:
		if s.mapSep == "" {
			return "", errors.New("must be a value or a list")
		}
		var err error
		if value, err = yamlMapValue(node, s.mapSep); err != nil {
			return "", err
		}
	default:
		return "", errors.New("must be a value or a list")
	}
	if strings.HasSuffix(key, "_file") {
		b, err := os.ReadFile(value)
		if err != nil {
			return "", errors.Unwrap(err)
		}
		value = strings.TrimSpace(string(b))
	}
	return value, nil
}

// yamlMapValue renders a YAML map as key=value entries joined with sep, a
// list value as its items joined with commas.
func yamlMapValue(node *yaml.Node, sep string) (string, error) {
	parts := make([]string, 0, len(node.Content)/2)
	for i := 0; i+1 < len(node.Content); i += 2 {
		k, v := node.Content[i], node.Content[i+1]
		var vals []string
		switch v.Kind {
		case yaml.ScalarNode:
			vals = []string{v.Value}
		case yaml.SequenceNode:
			for _, c := range v.Content {
				if c.Kind != yaml.ScalarNode {
					return "", fmt.Errorf("line %d: %s: want a list of names", c.Line, k.Value)
				}
				vals = append(vals, c.Value)
			}
		default:
			return "", fmt.Errorf("line %d: %s: want a value or a list", v.Line, k.Value)
		}
		parts = append(parts, k.Value+"="+strings.Join(vals, ","))
	}
	return strings.Join(parts, sep), nil
}
