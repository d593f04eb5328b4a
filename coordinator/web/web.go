// Package web is the coordinator's dashboard and its JSON REST API. The
// API is a gateway to the user API every client uses (the "flotilla" micro
// service, through coordinator/client), so a page action is the same
// request, with the same NATS permissions, as the CLI's. The live event
// feed relays the fleet's events (subjects.Namespace.EventsAll) as
// server-sent events. The page is plain HTML, CSS and JavaScript embedded
// in the binary; charts are SVG.
//
// REST API (JSON; errors are {"error":{"code":N,"name":"...","message":"..."}}):
//
//	GET  /api/v1/overview                 workers and jobs
//	GET  /api/v1/workers                  registered workers
//	GET  /api/v1/jobs                     jobs, with events/s, lag and last checkpoint time
//	GET  /api/v1/jobs/{job}               a job and its tasks, with their figures
//	GET  /api/v1/jobs/{job}/checkpoints   retained checkpoints with per-task statistics
//	GET  /api/v1/jobs/{job}/history       checkpoint and savepoint attempts (?limit=N)
//	GET  /api/v1/jobs/{job}/savepoints    savepoints and their locations
//	POST /api/v1/jobs/{job}/savepoint     trigger a savepoint and wait for it
//	POST /api/v1/jobs/{job}/stop          stop with a savepoint
//	POST /api/v1/jobs/{job}/rescale       {"parallelism":N}: stop with a savepoint, resubmit at N
//	POST /api/v1/jobs/{job}/cancel        cancel
//	GET  /api/v1/events                   the live event feed (text/event-stream)
//
// POST requests must carry Content-Type: application/json, and a request
// with an Origin header must come from the page's own origin: a page of
// another site cannot make a browser act on the dashboard.
package web

import (
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/metrics"
	"github.com/flotilla-io/flotilla/subjects"
)

//go:embed assets
var assets embed.FS

// Config configures the dashboard.
type Config struct {
	// Conn is the NATS connection the API calls and the event feed use.
	Conn      *nats.Conn
	Namespace subjects.Namespace
	// Token, if set, is required on every request: as a bearer token
	// (Authorization: Bearer <token>) or as the password of HTTP basic
	// authentication (any user name), which is what a browser prompts for.
	Token  string
	Logger *slog.Logger
	// ActionTimeout bounds savepoint, stop and rescale requests (default
	// 10 min); other requests take at most 30 s.
	ActionTimeout time.Duration
}

// Handler returns the dashboard and its API.
func Handler(cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ActionTimeout <= 0 {
		cfg.ActionTimeout = 10 * time.Minute
	}
	s := &server{cfg: cfg, api: client.New(cfg.Conn, cfg.Namespace)}
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "assets")
	mux.Handle("GET /", http.FileServerFS(static))
	mux.HandleFunc("GET /api/v1/overview", s.overview)
	mux.HandleFunc("GET /api/v1/workers", s.workers)
	mux.HandleFunc("GET /api/v1/jobs", s.jobs)
	mux.HandleFunc("GET /api/v1/jobs/{job}", s.job)
	mux.HandleFunc("GET /api/v1/jobs/{job}/checkpoints", s.checkpoints)
	mux.HandleFunc("GET /api/v1/jobs/{job}/history", s.history)
	mux.HandleFunc("GET /api/v1/jobs/{job}/savepoints", s.savepoints)
	mux.HandleFunc("POST /api/v1/jobs/{job}/savepoint", s.action)
	mux.HandleFunc("POST /api/v1/jobs/{job}/stop", s.action)
	mux.HandleFunc("POST /api/v1/jobs/{job}/rescale", s.action)
	mux.HandleFunc("POST /api/v1/jobs/{job}/cancel", s.action)
	mux.HandleFunc("GET /api/v1/events", s.events)
	return s.guard(mux)
}

type server struct {
	cfg Config
	api *client.Client
}

// guard enforces the token and the same-origin rule for actions.
func (s *server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Frame-Options", "DENY")
		if s.cfg.Token != "" && !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="flotilla", charset="UTF-8"`)
			writeError(w, subjects.Errorf(subjects.CodeUnauthorized, "the dashboard needs its token (bearer, or as the basic-auth password)"))
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if o := r.Header.Get("Origin"); o != "" && o != "http://"+r.Host && o != "https://"+r.Host {
				writeError(w, subjects.Errorf(subjects.CodeUnauthorized, "cross-origin request from %s refused", o))
				return
			}
			if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
				writeError(w, subjects.Errorf(subjects.CodeInvalidArgument, "actions take Content-Type: application/json"))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (s *server) authorized(r *http.Request) bool {
	var got string
	if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") {
		got = strings.TrimPrefix(h, "Bearer ")
	} else if _, p, ok := r.BasicAuth(); ok {
		got = p
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.Token)) == 1
}

// status maps an error code to an HTTP status.
func status(c subjects.Code) int {
	switch c {
	case subjects.CodeUnknownJob, subjects.CodeUnknownCheckpoint:
		return http.StatusNotFound
	case subjects.CodeUnauthorized:
		return http.StatusUnauthorized
	case subjects.CodeJobExists, subjects.CodeJobNotRunning:
		return http.StatusConflict
	case subjects.CodeUnavailable, subjects.CodeStorageUnavailable:
		return http.StatusServiceUnavailable
	case subjects.CodeTimeout:
		return http.StatusGatewayTimeout
	case subjects.CodeInternal:
		return http.StatusInternalServerError
	}
	if c >= 100 && c < 200 || c == subjects.CodeParallelismTooHigh || c == subjects.CodeInvalidJobSpec || c == subjects.CodeInvalidLocation {
		return http.StatusBadRequest
	}
	return http.StatusBadGateway // the coordinator refused for a reason of its own (e.g. savepoint_failed)
}

type apiError struct {
	Code    subjects.Code `json:"code"`
	Name    string        `json:"name"`
	Message string        `json:"message"`
}

func writeError(w http.ResponseWriter, err error) {
	e := subjects.AsError(err)
	writeJSON(w, status(e.Code), map[string]apiError{"error": {Code: e.Code, Name: e.Code.String(), Message: e.Message}})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func reply[T any](w http.ResponseWriter, v T, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *server) ctx(r *http.Request, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), d)
}

func jobOf(r *http.Request) (string, error) {
	job := r.PathValue("job")
	return job, subjects.ValidateName("job", job)
}

func (s *server) overview(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.ctx(r, 30*time.Second)
	defer cancel()
	workers, err := s.api.Workers(ctx)
	if err != nil {
		writeError(w, err)
		return
	}
	jobs, err := s.api.Jobs(ctx)
	reply(w, map[string]any{"workers": workers, "jobs": jobs, "time": time.Now().UTC()}, err)
}

func (s *server) workers(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.ctx(r, 30*time.Second)
	defer cancel()
	ws, err := s.api.Workers(ctx)
	reply(w, ws, err)
}

func (s *server) jobs(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.ctx(r, 30*time.Second)
	defer cancel()
	js, err := s.api.Jobs(ctx)
	reply(w, js, err)
}

// jobCall runs f for the request's job.
func jobCall[T any](s *server, w http.ResponseWriter, r *http.Request, d time.Duration, f func(ctx context.Context, job string) (T, error)) {
	job, err := jobOf(r)
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := s.ctx(r, d)
	defer cancel()
	v, err := f(ctx, job)
	reply(w, v, err)
}

func (s *server) job(w http.ResponseWriter, r *http.Request) {
	jobCall(s, w, r, 30*time.Second, s.api.Status)
}

func (s *server) checkpoints(w http.ResponseWriter, r *http.Request) {
	jobCall(s, w, r, 30*time.Second, s.api.Checkpoints)
}

func (s *server) savepoints(w http.ResponseWriter, r *http.Request) {
	jobCall(s, w, r, 30*time.Second, s.api.Savepoints)
}

func (s *server) history(w http.ResponseWriter, r *http.Request) {
	limit := 0
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			writeError(w, subjects.Errorf(subjects.CodeInvalidArgument, "limit %q is not a number", v))
			return
		}
		limit = n
	}
	jobCall(s, w, r, 30*time.Second, func(ctx context.Context, job string) (subjects.CheckpointHistory, error) {
		return s.api.History(ctx, job, limit)
	})
}

// action carries out a POST on a job: savepoint, stop, rescale, cancel.
func (s *server) action(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Parallelism int    `json:"parallelism"`
		Format      string `json:"format"`
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err == nil && len(strings.TrimSpace(string(b))) > 0 {
		err = json.Unmarshal(b, &body)
	}
	if err != nil {
		writeError(w, subjects.Errorf(subjects.CodeBadMessage, "request body: %v", err))
		return
	}
	switch what := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]; what {
	case "savepoint":
		t := subjects.TriggerSavepoint{}
		if body.Format != "" {
			if err := t.Format.UnmarshalText([]byte(body.Format)); err != nil {
				writeError(w, subjects.Errorf(subjects.CodeInvalidArgument, "format: %v", err))
				return
			}
		}
		jobCall(s, w, r, s.cfg.ActionTimeout, func(ctx context.Context, job string) (subjects.SavepointResult, error) {
			t.Job = job
			return s.api.TriggerSavepoint(ctx, t)
		})
	case "stop":
		jobCall(s, w, r, s.cfg.ActionTimeout, s.api.Stop)
	case "rescale":
		jobCall(s, w, r, s.cfg.ActionTimeout, func(ctx context.Context, job string) (subjects.SavepointResult, error) {
			return s.api.Rescale(ctx, job, body.Parallelism)
		})
	case "cancel":
		jobCall(s, w, r, 30*time.Second, s.api.Cancel)
	default:
		writeError(w, subjects.Errorf(subjects.CodeInvalidArgument, "unknown action %q", what))
	}
}

// events relays the fleet's events as server-sent events until the client
// goes away. A slow client loses events rather than holding NATS up.
func (s *server) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, errors.New("streaming unsupported"))
		return
	}
	ch := make(chan *nats.Msg, 256)
	sub, err := s.cfg.Conn.Subscribe(s.cfg.Namespace.EventsAll(), func(m *nats.Msg) {
		select {
		case ch <- m:
		default:
		}
	})
	if err != nil {
		writeError(w, subjects.Errorf(subjects.CodeUnavailable, "subscribe to events: %v", err))
		return
	}
	defer sub.Unsubscribe()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": flotilla events\n\n")
	fl.Flush()
	ping := time.NewTicker(15 * time.Second)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-ping.C:
			fmt.Fprint(w, ": ping\n\n")
		case m := <-ch:
			var ev subjects.Event
			if subjects.Decode(m.Data, &ev) != nil {
				continue
			}
			b, _ := json.Marshal(ev)
			fmt.Fprintf(w, "data: %s\n\n", b)
		}
		fl.Flush()
	}
}

// Serve serves the dashboard on addr until ctx is done, and returns once
// it listens, with the address bound. Where the fleet's NATS connection is
// authenticated (natsAuth), a dashboard without a token would hand NATS's
// permissions to anyone who reaches the port: Serve refuses to start one.
func Serve(ctx context.Context, addr string, cfg Config, natsAuth bool) (net.Addr, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if natsAuth && cfg.Token == "" {
		return nil, errors.New("the dashboard of a fleet with NATS authentication needs a token: set --http-token or FLOTILLA_HTTP_TOKEN")
	}
	if cfg.Token == "" {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
				cfg.Logger.Warn("the dashboard listens beyond loopback without a token; anyone who reaches it can stop jobs", "addr", addr)
			}
		}
	}
	return metrics.ServeHTTP(ctx, addr, Handler(cfg), cfg.Logger)
}
