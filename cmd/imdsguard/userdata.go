package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/imdsguard/imdsguard/packaging/userdata"
)

const userdataUsage = `usage: imdsguard userdata [--package-url URL] [--cluster NAME] [--enforce-awsvpc] [--merge FILE]

Prints EC2 user data (MIME multipart) for an ECS container instance: a
cloud-boothook that installs imdsguard if missing and runs 'imdsguard apply'
before dockerd starts, and a shell script that sets ECS agent options.

`

// cmdUserdata prints user data for launch templates; the generator lives in
// packaging/userdata so it can be tested without a process.
func cmdUserdata(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("userdata", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported in one line below
	var o userdata.Options
	var merge string
	fs.StringVar(&o.PackageURL, "package-url", "", "https://, http:// or s3:// URL of the imdsguard .rpm/.deb (empty: already in the AMI)")
	fs.StringVar(&o.Cluster, "cluster", "", "ECS cluster name, written as ECS_CLUSTER")
	fs.BoolVar(&o.EnforceAWSVPC, "enforce-awsvpc", false, "write ECS_AWSVPC_BLOCK_IMDS=true (blocks IMDS for awsvpc tasks)")
	fs.StringVar(&merge, "merge", "", "existing user data to include (MIME, script or cloud-config; - for stdin)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, userdataUsage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "imdsguard userdata: %v (see imdsguard userdata -h)\n", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "imdsguard userdata: unexpected argument %q (see imdsguard userdata -h)\n", fs.Arg(0))
		return 2
	}
	if merge != "" {
		var err error
		if merge == "-" {
			o.Merge, err = io.ReadAll(os.Stdin)
		} else {
			o.Merge, err = os.ReadFile(merge)
		}
		if err != nil {
			fmt.Fprintf(stderr, "imdsguard userdata: --merge: %v\n", err)
			return 2
		}
	}
	out, err := userdata.Generate(o)
	if err != nil {
		fmt.Fprintf(stderr, "imdsguard userdata: %v\n", err)
		return 2
	}
	if len(out) > userdata.MaxSize {
		fmt.Fprintf(stderr, "imdsguard userdata: warning: %d bytes is over EC2's %d-byte user data limit\n", len(out), userdata.MaxSize)
	}
	if _, err := stdout.Write(out); err != nil {
		fmt.Fprintf(stderr, "imdsguard userdata: %v\n", err)
		return 1
	}
	return 0
}
