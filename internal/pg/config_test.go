package pg

import (
	"testing"
	"time"
)

func TestPoolDefaultsYieldToTheURL(t *testing.T) {
	for _, c := range []struct {
		dsn  string
		want int32
	}{
		{"postgres://u@h/db", defaultMaxConns},
		{"postgres://u@h/db?pool_max_conns=3", 3},
		{"postgresql://u:pool_max_conns@h/db?sslmode=require", defaultMaxConns},
		{"host=h user=u pool_max_conns=7", 7},
		{"host=h user=u password=pool_max_conns=9", defaultMaxConns},
	} {
		cfg, err := ParseConfig(c.dsn, time.Second)
		if err != nil {
			t.Fatalf("%s: %v", c.dsn, err)
		}
		if cfg.MaxConns != c.want {
			t.Errorf("%s: MaxConns %d, want %d", c.dsn, cfg.MaxConns, c.want)
		}
	}
}
