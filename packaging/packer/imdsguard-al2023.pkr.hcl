# Bakes an ECS-optimized Amazon Linux 2023 AMI with imdsguard installed and
# enabled, and ECS_AWSVPC_BLOCK_IMDS=true. The last provisioner runs
# 'imdsguard check', so an image that is not protected fails to bake.
#
#   make package
#   packer init packaging/packer
#   packer build -var package_rpm=dist/imdsguard-<version>.x86_64.rpm packaging/packer
#
# Plugin requirements are in plugins.pkr.hcl (Packer >= 1.7), so this file
# alone still passes older Packers' 'validate -syntax-only' (Debian's 1.6).

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "instance_type" {
  type    = string
  default = "t3.small"
}

variable "package_rpm" {
  type        = string
  description = "Path to the imdsguard .rpm built by 'make package'."
}

variable "ami_name_prefix" {
  type    = string
  default = "ecs-al2023-imdsguard"
}

source "amazon-ebs" "al2023_ecs" {
  region        = var.region
  instance_type = var.instance_type
  ssh_username  = "ec2-user"
  ami_name      = "${var.ami_name_prefix}-${formatdate("YYYYMMDDhhmmss", timestamp())}"

  source_ami_filter {
    filters = {
      name                = "al2023-ami-ecs-hvm-*-kernel-6.1-x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  # The build instance itself only answers IMDSv2, and instances launched
  # from the AMI default to IMDSv2 too: defence in depth next to imdsguard.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  imds_support = "v2.0"

  tags = {
    Name      = var.ami_name_prefix
    imdsguard = "enforced"
  }
}

build {
  sources = ["source.amazon-ebs.al2023_ecs"]

  provisioner "file" {
    source      = var.package_rpm
    destination = "/tmp/imdsguard.rpm"
  }

  provisioner "file" {
    source      = "${path.root}/provision-imdsguard.sh"
    destination = "/tmp/provision-imdsguard.sh"
  }

  provisioner "shell" {
    inline = ["sudo bash /tmp/provision-imdsguard.sh /tmp/imdsguard.rpm"]
  }

  # Must stay last: exit 1 (degraded/exposed) or 2 (could not check) fails
  # the build.
  provisioner "shell" {
    inline = ["sudo imdsguard check"]
  }
}
