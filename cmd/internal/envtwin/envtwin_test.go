package envtwin

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

func TestName(t *testing.T) {
	for flag, want := range map[string]string{
		"data":              "CAIRN_DATA",
		"s3-access-key":     "CAIRN_S3_ACCESS_KEY",
		"max-recv-msg-size": "CAIRN_MAX_RECV_MSG_SIZE",
		"no-progress":       "CAIRN_NO_PROGRESS",
	} {
		if got := Name(flag); got != want {
			t.Errorf("Name(%q) = %q, want %q", flag, got, want)
		}
	}
}

// seen is what the test tree's commands ran with.
type seen struct {
	server     string
	grace      time.Duration
	noProgress bool
	buildArgs  []string
	deep       string
	graceSet   bool // --grace-period's Changed
	ran        string
	preRan     bool
}

// newTree is a root with a persistent --server, a subcommand "run" with
// flags of several types, and "outer inner" two levels down; Install is
// applied with env.
func newTree(env map[string]string, s *seen) *cobra.Command {
	root := &cobra.Command{Use: "tool", SilenceUsage: true, SilenceErrors: true}
	root.PersistentFlags().StringVar(&s.server, "server", "127.0.0.1:7070", "server address")
	root.PersistentPreRunE = func(*cobra.Command, []string) error { s.preRan = true; return nil }
	run := &cobra.Command{Use: "run", RunE: func(cmd *cobra.Command, _ []string) error {
		s.ran, s.graceSet = "run", cmd.Flags().Changed("grace-period")
		return nil
	}}
	run.Flags().DurationVar(&s.grace, "grace-period", 30*time.Second, "grace")
	run.Flags().BoolVar(&s.noProgress, "no-progress", false, "no bar")
	run.Flags().StringArrayVar(&s.buildArgs, "build-arg", []string{"DEFAULT=1"}, "build args")
	outer := &cobra.Command{Use: "outer"}
	inner := &cobra.Command{Use: "inner", RunE: func(*cobra.Command, []string) error { s.ran = "inner"; return nil }}
	inner.Flags().StringVar(&s.deep, "deep", "", "deep flag")
	outer.AddCommand(inner)
	root.AddCommand(run, outer)
	Install(root, func(k string) string { return env[k] })
	return root
}

func execute(env map[string]string, args ...string) (*seen, string, error) {
	s := &seen{}
	root := newTree(env, s)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return s, out.String(), err
}

func TestApply(t *testing.T) {
	env := map[string]string{
		"CAIRN_SERVER":       "10.0.0.1:1",
		"CAIRN_GRACE_PERIOD": "5s",
		"CAIRN_NO_PROGRESS":  "true",
		"CAIRN_BUILD_ARG":    "A=1",
		"CAIRN_DEEP":         "from env",
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want seen
	}{
		{"defaults without twins", nil, []string{"run"},
			seen{server: "127.0.0.1:7070", grace: 30 * time.Second, buildArgs: []string{"DEFAULT=1"}, ran: "run", preRan: true}},
		{"every twin applies, the persistent flag's too", env, []string{"run"},
			seen{server: "10.0.0.1:1", grace: 5 * time.Second, noProgress: true, buildArgs: []string{"A=1"}, ran: "run", preRan: true}},
		{"a flag wins over its twin", env, []string{"run", "--server", "flag:2", "--grace-period", "1s", "--no-progress=false", "--build-arg", "B=2"},
			seen{server: "flag:2", grace: time.Second, buildArgs: []string{"B=2"}, graceSet: true, ran: "run", preRan: true}},
		{"an empty twin counts as unset", map[string]string{"CAIRN_SERVER": "", "CAIRN_GRACE_PERIOD": ""}, []string{"run"},
			seen{server: "127.0.0.1:7070", grace: 30 * time.Second, buildArgs: []string{"DEFAULT=1"}, ran: "run", preRan: true}},
		{"two levels down", env, []string{"outer", "inner"},
			seen{server: "10.0.0.1:1", grace: 30 * time.Second, buildArgs: []string{"DEFAULT=1"}, deep: "from env", ran: "inner", preRan: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := execute(tc.env, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if got.server != tc.want.server || got.grace != tc.want.grace || got.noProgress != tc.want.noProgress ||
				strings.Join(got.buildArgs, " ") != strings.Join(tc.want.buildArgs, " ") || got.deep != tc.want.deep ||
				got.graceSet != tc.want.graceSet || got.ran != tc.want.ran || got.preRan != tc.want.preRan {
				t.Errorf("got %+v, want %+v", *got, tc.want)
			}
		})
	}
}

func TestApplyBadTwin(t *testing.T) {
	s, _, err := execute(map[string]string{"CAIRN_GRACE_PERIOD": "soon", "CAIRN_NO_PROGRESS": "maybe"}, "run")
	if err == nil {
		t.Fatal("no error for twins that do not parse")
	}
	for _, want := range []string{`CAIRN_GRACE_PERIOD="soon" (the twin of --grace-period)`, `CAIRN_NO_PROGRESS="maybe" (the twin of --no-progress)`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if s.ran != "" || s.preRan {
		t.Errorf("ran %q (root's pre-run %v) after a bad twin; want nothing run", s.ran, s.preRan)
	}
	// A bad twin of a flag given on the command line is never read.
	if _, _, err := execute(map[string]string{"CAIRN_GRACE_PERIOD": "soon"}, "run", "--grace-period", "1s"); err != nil {
		t.Errorf("bad twin of a flag that was given: %v", err)
	}
}

func TestHelpNamesTwins(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"run", "--help"}, []string{"server address [$CAIRN_SERVER]", "grace [$CAIRN_GRACE_PERIOD]", "no bar [$CAIRN_NO_PROGRESS]", "build args [$CAIRN_BUILD_ARG]", "--foo-bar\nis CAIRN_FOO_BAR"}},
		{[]string{"outer", "inner", "--help"}, []string{"deep flag [$CAIRN_DEEP]", "[$CAIRN_SERVER]", "environment twin"}},
	} {
		s, out, err := execute(map[string]string{"CAIRN_HELP": "true"}, tc.args...)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range tc.want {
			if !strings.Contains(out, want) {
				t.Errorf("%v: help lacks %q:\n%s", tc.args, want, out)
			}
		}
		if strings.Contains(out, "CAIRN_HELP") || s.ran != "" {
			t.Errorf("%v: --help got a twin, or the command ran:\n%s", tc.args, out)
		}
	}
	// Twins are named once, however often the tree is walked.
	_, out, _ := execute(nil, "run", "--help")
	if n := strings.Count(out, "[$CAIRN_SERVER]"); n != 1 {
		t.Errorf("[$CAIRN_SERVER] %d times in the help, want once:\n%s", n, out)
	}
}
