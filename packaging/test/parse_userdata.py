"""Parse user data with cloud-init's own processor (Debian's cloud-init
package) and write each part to OUTDIR as NN-<type>. Prints one line per part:
"<index> <content-type>". Falls back to Python's email parser, saying so,
when cloud-init is not importable."""
import email
import os
import sys
import tempfile


def parts_cloudinit(blob):
    from cloudinit import helpers, user_data

    paths = helpers.Paths({"cloud_dir": tempfile.mkdtemp()})
    msg = user_data.UserDataProcessor(paths).process(blob)
    return msg


def main():
    path, outdir = sys.argv[1], sys.argv[2]
    blob = open(path, "rb").read()
    try:
        msg = parts_cloudinit(blob)
        print("parser cloud-init", file=sys.stderr)
    except ImportError:
        msg = email.message_from_bytes(blob)
        print("parser email (cloud-init not importable)", file=sys.stderr)
    os.makedirs(outdir, exist_ok=True)
    i = 0
    for part in msg.walk():
        if part.get_content_maintype() == "multipart":
            continue
        ctype = part.get_content_type()
        name = "%02d-%s" % (i, ctype.replace("/", "_"))
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(part.get_payload(decode=True))
        print(i, ctype)
        i += 1


main()
