# Packer >= 1.7 reads this; the Amazon builder is a separate plugin since 1.10.
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      version = ">= 1.2.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}
