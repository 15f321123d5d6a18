package cni_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/vmnet-dev/vmnet/internal/netns"
	"github.com/vmnet-dev/vmnet/internal/testutil"
)

// debianCNI is where Debian's containernetworking-plugins puts ptp,
// bridge, host-local and the rest.
const debianCNI = "/usr/lib/cni"

// binDir holds vmnet-cni as the "vmnet" plugin, built as `make build`
// builds it.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vmnet-cni-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755)
	binDir = dir
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "vmnet"), "../../cmd/vmnet-cni")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build vmnet-cni: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireCNI skips (fails under CI=true) unless the test can make
// namespaces and TAPs and Debian's reference plugins are installed.
func requireCNI(t testing.TB) {
	t.Helper()
	testutil.RequireTUN(t)
	for _, p := range []string{"ptp", "bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(debianCNI, p)); err != nil {
			testutil.Skip(t, "Debian's containernetworking-plugins is not installed (.ci/install-deps installs it): %v", err)
		}
	}
}

// rig is one test's CNI world: a namespace standing in for the node,
// where libcni runs the plugins (so ptp's and bridge's host sides land
// there, not on the machine), and the plugins' state in a temporary
// folder (libcni's cache, host-local's leases, vmnet's records).
type rig struct {
	t    testing.TB
	node string
	dir  string
	cni  *libcni.CNIConfig
}

func newRig(t testing.TB) *rig {
	t.Helper()
	requireCNI(t)
	r := &rig{t: t, node: testutil.NetNS(t), dir: t.TempDir()}
	r.cni = libcni.NewCNIConfigWithCacheDir([]string{binDir, debianCNI}, filepath.Join(r.dir, "cache"), nil)
	return r
}

// pod makes a namespace for a pod, deleted when the test ends, and
// returns its name and the path a runtime passes as CNI_NETNS.
func (r *rig) pod() (name, path string) {
	name = testutil.NetNS(r.t)
	return name, "/run/netns/" + name
}

// doomedPod is a pod namespace the test deletes itself (DEL after the
// namespace is gone); cleanup removes it only if the test did not.
func (r *rig) doomedPod() (name, path string, del func()) {
	name = fmt.Sprintf("vmnet-cni-gone-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	d, err := netns.Add(context.Background(), name)
	if err != nil {
		r.t.Fatalf("create namespace %s: %v", name, err)
	}
	done := false
	del = func() {
		if !done {
			done = true
			if err := d(); err != nil {
				r.t.Errorf("delete namespace %s: %v", name, err)
			}
		}
	}
	r.t.Cleanup(del)
	return name, "/run/netns/" + name, del
}

// vmnetDir and ipamDir are where the rig's vmnet and host-local keep
// their state.
func (r *rig) vmnetDir() string { return filepath.Join(r.dir, "vmnet") }
func (r *rig) ipamDir() string  { return filepath.Join(r.dir, "ipam") }

// conflist reads docs/cni/file as a user would copy it, and substitutes
// what a test must own: the state folders of vmnet and host-local. edit,
// if not nil, may change vmnet's entry (a bad value, another mode). The
// file itself is never changed.
func (r *rig) conflist(file string, edit func(vmnet map[string]any)) *libcni.NetworkConfigList {
	r.t.Helper()
	data, err := os.ReadFile(filepath.Join("../../docs/cni", file))
	if err != nil {
		r.t.Fatal(err)
	}
	var list map[string]any
	if err := json.Unmarshal(data, &list); err != nil {
		r.t.Fatalf("%s: %v", file, err)
	}
	found := false
	for _, p := range list["plugins"].([]any) {
		p := p.(map[string]any)
		if ipam, ok := p["ipam"].(map[string]any); ok && ipam["type"] == "host-local" {
			ipam["dataDir"] = r.ipamDir()
		}
		if p["type"] == "vmnet" {
			found = true
			p["dataDir"] = r.vmnetDir()
			if edit != nil {
				edit(p)
			}
		}
	}
	if !found {
		r.t.Fatalf("%s has no plugin of type vmnet", file)
	}
	out, err := json.Marshal(list)
	if err != nil {
		r.t.Fatal(err)
	}
	l, err := libcni.ConfListFromBytes(out)
	if err != nil {
		r.t.Fatalf("%s: %v", file, err)
	}
	return l
}

// vmnetOnly is a list of vmnet's entry of list alone, at CNI version v:
// what a runtime's GC and STATUS reach vmnet with when the chain's other
// plugins (Debian's speak CNI 1.0.0 at most) do not take those verbs.
func (r *rig) vmnetOnly(list *libcni.NetworkConfigList, v string) *libcni.NetworkConfigList {
	r.t.Helper()
	for _, p := range list.Plugins {
		if p.Network.Type != "vmnet" {
			continue
		}
		var conf map[string]any
		if err := json.Unmarshal(p.Bytes, &conf); err != nil {
			r.t.Fatal(err)
		}
		out, err := json.Marshal(map[string]any{"cniVersion": v, "name": list.Name, "plugins": []any{conf}})
		if err != nil {
			r.t.Fatal(err)
		}
		l, err := libcni.ConfListFromBytes(out)
		if err != nil {
			r.t.Fatal(err)
		}
		return l
	}
	r.t.Fatalf("%s has no plugin of type vmnet", list.Name)
	return nil
}

// inNode runs fn on a thread in the node namespace: libcni's plugins are
// started from it and inherit it.
func (r *rig) inNode(fn func()) {
	r.t.Helper()
	testutil.InNetNS(r.t, r.node, func() error { fn(); return nil })
}

func rt(id, netNS, ifName string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: netNS, IfName: ifName}
}

// add runs ADD of list and returns the result in CNI 1.1's form.
func (r *rig) add(list *libcni.NetworkConfigList, c *libcni.RuntimeConf) (*current.Result, error) {
	r.t.Helper()
	var res types.Result
	var err error
	r.inNode(func() { res, err = r.cni.AddNetworkList(context.Background(), list, c) })
	if err != nil {
		return nil, err
	}
	cur, cerr := current.NewResultFromResult(res)
	if cerr != nil {
		r.t.Fatalf("convert result: %v", cerr)
	}
	return cur, nil
}

func (r *rig) mustAdd(list *libcni.NetworkConfigList, c *libcni.RuntimeConf) *current.Result {
	r.t.Helper()
	res, err := r.add(list, c)
	if err != nil {
		r.t.Fatalf("ADD %s %s/%s: %v", list.Name, c.ContainerID, c.IfName, err)
	}
	return res
}

func (r *rig) check(list *libcni.NetworkConfigList, c *libcni.RuntimeConf) error {
	r.t.Helper()
	var err error
	r.inNode(func() { err = r.cni.CheckNetworkList(context.Background(), list, c) })
	return err
}

func (r *rig) del(list *libcni.NetworkConfigList, c *libcni.RuntimeConf) error {
	r.t.Helper()
	var err error
	r.inNode(func() { err = r.cni.DelNetworkList(context.Background(), list, c) })
	return err
}

func (r *rig) gc(cni *libcni.CNIConfig, list *libcni.NetworkConfigList, valid ...*libcni.RuntimeConf) error {
	r.t.Helper()
	args := &libcni.GCArgs{}
	for _, v := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	var err error
	r.inNode(func() { err = cni.GCNetworkList(context.Background(), list, args) })
	return err
}

func (r *rig) status(list *libcni.NetworkConfigList) error {
	r.t.Helper()
	var err error
	r.inNode(func() { err = r.cni.GetStatusNetworkList(context.Background(), list) })
	return err
}

// cniCode is the CNI error code of err, or -1 when it carries none.
func cniCode(err error) int {
	var e *types.Error
	if errors.As(err, &e) {
		return int(e.Code)
	}
	return -1
}

// tapOf returns the interface of res that lives in netNS and is not the
// one named ifName: the TAP (and, in bridge mode, the bridge before it).
func tapOf(t testing.TB, res *current.Result, netNS string) *current.Interface {
	t.Helper()
	var last *current.Interface
	for _, i := range res.Interfaces {
		if i.Sandbox == netNS {
			last = i
		}
	}
	if last == nil {
		t.Fatalf("result has no interface in %s: %+v", netNS, res.Interfaces)
	}
	return last
}

// links lists a namespace's links, one "name type" per line, sorted by
// the kernel's order, without counters: what "nothing left behind"
// compares.
func links(t testing.TB, ns string) string {
	t.Helper()
	out := testutil.Exec(t, ns, "ip", "-o", "-d", "link", "show")
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name := strings.TrimSuffix(f[1], ":")
		name, _, _ = strings.Cut(name, "@")
		kind := "?"
		for _, k := range []string{"tun", "bridge", "veth", "loopback"} {
			if strings.Contains(line, " "+k+" ") || k == "loopback" && strings.Contains(line, "link/loopback") {
				kind = k
			}
		}
		fmt.Fprintf(&b, "%s %s\n", name, kind)
	}
	return b.String()
}

// records lists vmnet's attachment records in the rig's state folder.
func (r *rig) records(network string) []string {
	r.t.Helper()
	m, err := filepath.Glob(filepath.Join(r.vmnetDir(), network, "*.json"))
	if err != nil {
		r.t.Fatal(err)
	}
	for i := range m {
		m[i] = filepath.Base(m[i])
	}
	return m
}

// leases lists host-local's leases for network (files named by address).
func (r *rig) leases(network string) []string {
	r.t.Helper()
	entries, err := os.ReadDir(filepath.Join(r.ipamDir(), network))
	if err != nil && !os.IsNotExist(err) {
		r.t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if n := e.Name(); n != "lock" && !strings.HasPrefix(n, "last_reserved_ip") {
			out = append(out, n)
		}
	}
	return out
}

// withVersion is list at CNI version v, as a runtime of that version
// would hand it over.
func (r *rig) withVersion(list *libcni.NetworkConfigList, v string) *libcni.NetworkConfigList {
	r.t.Helper()
	var m map[string]any
	if err := json.Unmarshal(list.Bytes, &m); err != nil {
		r.t.Fatal(err)
	}
	m["cniVersion"] = v
	out, err := json.Marshal(m)
	if err != nil {
		r.t.Fatal(err)
	}
	l, err := libcni.ConfListFromBytes(out)
	if err != nil {
		r.t.Fatal(err)
	}
	return l
}
