package main

import (
	"fmt"
	"io"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// mintToken signs an HS256 token the way a frontend sharing BETTER_AUTH_SECRET does.
// make run uses it to print a working curl command; the tests use it for every request.
func mintToken(secret []byte, claims jwt.RegisteredClaims) (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}

// printDevToken serves `taskflow-api dev-token USER_ID`: a token valid for a day, signed
// with the configured secret, for trying the API by hand.
func printDevToken(getenv func(string) string, userID string, stdout io.Writer) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	if cfg.secret == nil {
		return fmt.Errorf("dev-token needs BETTER_AUTH_SECRET")
	}
	now := time.Now()
	token, err := mintToken(cfg.secret, jwt.RegisteredClaims{
		Subject:   userID,
		Issuer:    cfg.issuer,
		Audience:  jwt.ClaimStrings{cfg.audience},
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(24 * time.Hour)),
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, token)
	return err
}
