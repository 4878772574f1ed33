// Package userdata builds EC2 user data that installs imdsguard and puts the
// IMDS block in place before dockerd starts, replacing AWS's bridge-mode
// recipe (a boothook that loads static iptables rules).
package userdata

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/textproto"
	"regexp"
	"sort"
	"strings"
)

// MaxSize is EC2's limit on raw user data.
const MaxSize = 16 * 1024

// Options says what the generated user data does.
type Options struct {
	// PackageURL is where the boothook fetches the imdsguard .rpm or .deb
	// when imdsguard is not already installed: https://, http:// or s3://
	// (s3 needs the AWS CLI and an instance role). Empty means the AMI
	// already has imdsguard.
	PackageURL string
	// Cluster, when set, is written as ECS_CLUSTER.
	Cluster string
	// EnforceAWSVPC writes ECS_AWSVPC_BLOCK_IMDS=true so the ECS agent also
	// blocks IMDS for awsvpc tasks, which never pass DOCKER-USER.
	EnforceAWSVPC bool
	// Merge is existing user data to keep: MIME multipart (its parts are
	// kept) or a single script / cloud-config (wrapped as one part).
	// gzip-compressed input is accepted, as cloud-init accepts it.
	Merge []byte
}

// Part is one MIME part.
type Part struct {
	Header textproto.MIMEHeader
	Body   []byte
}

// ContentType is the part's media type without parameters.
func (p Part) ContentType() string {
	mt, _, err := mime.ParseMediaType(p.Header.Get("Content-Type"))
	if err != nil {
		return ""
	}
	return mt
}

var (
	clusterRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,255}$`)
	// Conservative on purpose: the URL ends up in a shell script.
	urlRe = regexp.MustCompile(`^(https?|s3)://[A-Za-z0-9._~:/?#\[\]@!$&()*+,;=%-]+$`)
)

func (o Options) validate() error {
	if o.Cluster != "" && !clusterRe.MatchString(o.Cluster) {
		return fmt.Errorf("cluster name %q: ECS allows 1-255 letters, digits, '-' and '_'", o.Cluster)
	}
	if o.PackageURL != "" {
		if !urlRe.MatchString(o.PackageURL) {
			return fmt.Errorf("package URL %q: want https://, http:// or s3:// without spaces or quotes", o.PackageURL)
		}
		// A presigned URL carries a query after the file name.
		path, _, _ := strings.Cut(o.PackageURL, "?")
		if !strings.HasSuffix(path, ".rpm") && !strings.HasSuffix(path, ".deb") {
			return fmt.Errorf("package URL %q: must end in .rpm or .deb", o.PackageURL)
		}
	}
	return nil
}

// Generate returns MIME multipart user data: the imdsguard boothook first
// (so it runs before any other boothook), the merged parts in their order,
// and the ECS settings script last (cloud-init runs scripts in part order,
// so its settings win over a merged script that appends to ecs.config).
func Generate(o Options) ([]byte, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	var merged []Part
	if len(bytes.TrimSpace(o.Merge)) > 0 {
		var err error
		if merged, err = SplitUserData(o.Merge); err != nil {
			return nil, fmt.Errorf("merge: %w", err)
		}
	}
	parts := []Part{textPart("text/cloud-boothook", Boothook(o.PackageURL))}
	parts = append(parts, merged...)
	if s := ECSScript(o.Cluster, o.EnforceAWSVPC); s != "" {
		parts = append(parts, textPart("text/x-shellscript", s))
	}
	return Encode(parts)
}

func textPart(contentType, body string) Part {
	h := textproto.MIMEHeader{}
	h.Set("Content-Type", contentType+`; charset="us-ascii"`)
	h.Set("MIME-Version", "1.0")
	h.Set("Content-Transfer-Encoding", "7bit")
	return Part{Header: h, Body: []byte(body)}
}

// Encode writes parts as multipart/mixed with a boundary none of them contains.
func Encode(parts []Part) ([]byte, error) {
	boundary := "==IMDSGUARD=="
	for i := 1; clashes(boundary, parts); i++ {
		boundary = fmt.Sprintf("==IMDSGUARD-%d==", i)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=%q\nMIME-Version: 1.0\n\n", boundary)
	for _, p := range parts {
		fmt.Fprintf(&b, "--%s\n", boundary)
		keys := make([]string, 0, len(p.Header))
		for k := range p.Header {
			keys = append(keys, k)
		}
		sort.Strings(keys) // stable output for review and tests
		for _, k := range keys {
			for _, v := range p.Header[k] {
				fmt.Fprintf(&b, "%s: %s\n", k, v)
			}
		}
		b.WriteString("\n")
		b.Write(p.Body)
		if len(p.Body) > 0 && p.Body[len(p.Body)-1] != '\n' {
			b.WriteString("\n")
		}
	}
	fmt.Fprintf(&b, "--%s--\n", boundary)
	return b.Bytes(), nil
}

func clashes(boundary string, parts []Part) bool {
	for _, p := range parts {
		if bytes.Contains(p.Body, []byte("--"+boundary)) {
			return true
		}
	}
	return false
}

// startTypes maps the first line of plain user data to its MIME type, the
// way cloud-init tells them apart.
var startTypes = []struct{ prefix, contentType string }{
	{"#cloud-boothook", "text/cloud-boothook"},
	{"#cloud-config-archive", "text/cloud-config-archive"},
	{"#cloud-config", "text/cloud-config"},
	{"#include-once", "text/x-include-once-url"},
	{"#include", "text/x-include-url"},
	{"#part-handler", "text/part-handler"},
	{"#upstart-job", "text/upstart-job"},
	{"## template: jinja", "text/jinja2"},
	{"#!", "text/x-shellscript"},
}

// SplitUserData returns the parts of existing user data.
func SplitUserData(data []byte) ([]Part, error) {
	if bytes.HasPrefix(data, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		if data, err = io.ReadAll(zr); err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
	}
	if looksLikeMIME(data) {
		return splitMIME(data)
	}
	first, _, _ := strings.Cut(string(data), "\n")
	first = strings.TrimRight(first, "\r")
	for _, st := range startTypes {
		if strings.HasPrefix(first, st.prefix) {
			p := Part{Header: textproto.MIMEHeader{}, Body: data}
			p.Header.Set("Content-Type", st.contentType)
			p.Header.Set("MIME-Version", "1.0")
			return []Part{p}, nil
		}
	}
	return nil, fmt.Errorf("cannot tell what kind of user data starts with %q: want MIME, a #! script, #cloud-config or another cloud-init format", first)
}

func looksLikeMIME(data []byte) bool {
	head := strings.ToLower(string(data[:min(len(data), 200)]))
	return strings.HasPrefix(head, "content-type:") || strings.HasPrefix(head, "mime-version:")
}

func splitMIME(data []byte) ([]Part, error) {
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(data)))
	header, err := tp.ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("MIME header: %w", err)
	}
	mt, params, err := mime.ParseMediaType(header.Get("Content-Type"))
	if err != nil {
		return nil, fmt.Errorf("MIME Content-Type: %w", err)
	}
	body, err := io.ReadAll(tp.R)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(mt, "multipart/") {
		// A single-part MIME message: keep it whole as one part.
		return []Part{{Header: header, Body: body}}, nil
	}
	if params["boundary"] == "" {
		return nil, errors.New("multipart user data without a boundary")
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	var parts []Part
	for {
		// Raw, so quoted-printable or base64 parts keep their encoding and
		// their Content-Transfer-Encoding header.
		p, err := mr.NextRawPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("multipart: %w", err)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			return nil, fmt.Errorf("multipart: %w", err)
		}
		parts = append(parts, Part{Header: p.Header, Body: b})
	}
	if len(parts) == 0 {
		return nil, errors.New("multipart user data has no parts")
	}
	return parts, nil
}

// shellQuote single-quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
