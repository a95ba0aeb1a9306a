# S3 bucket for promptray prompt tables (s3://<bucket>/<table_prefix>/...), and least-privilege IAM policies
# for the processes that publish to them (trainers, `promptray table ...`) and for those that only read
# them (inference servers). See README.md beside this file.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

variable "bucket_name" {
  description = "Globally unique bucket name."
  type        = string
}

variable "table_prefix" {
  description = "Key prefix the prompt tables live under (no leading or trailing slash), e.g. tables; a table URI is s3://<bucket>/<table_prefix>/<name>."
  type        = string
  default     = "tables"
}

variable "kms_key_arn" {
  description = "KMS key for SSE-KMS; null uses SSE-S3 (AES256)."
  type        = string
  default     = null
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted object version (old manifests, gc'd objects) is kept before it expires."
  type        = number
  default     = 30
}

variable "noncurrent_versions_kept" {
  description = "Newest noncurrent versions of each key kept regardless of age (manifest recovery)."
  type        = number
  default     = 20
}

variable "tags" {
  type    = map(string)
  default = {}
}

resource "aws_s3_bucket" "tables" {
  bucket = var.bucket_name
  tags   = var.tags
}

resource "aws_s3_bucket_ownership_controls" "tables" {
  bucket = aws_s3_bucket.tables.id
  rule {
    object_ownership = "BucketOwnerEnforced" # no ACLs
  }
}

resource "aws_s3_bucket_public_access_block" "tables" {
  bucket                  = aws_s3_bucket.tables.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# Versioning: a manifest swap or a gc delete keeps the previous bytes as a noncurrent version.
resource "aws_s3_bucket_versioning" "tables" {
  bucket = aws_s3_bucket.tables.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "tables" {
  bucket = aws_s3_bucket.tables.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "tables" {
  bucket     = aws_s3_bucket.tables.id
  depends_on = [aws_s3_bucket_versioning.tables]

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days           = var.noncurrent_version_days
      newer_noncurrent_versions = var.noncurrent_versions_kept
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  rule {
    id     = "remove-expired-delete-markers"
    status = "Enabled"
    filter {}
    expiration {
      expired_object_delete_marker = true
    }
  }
}

# TLS only.
data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.tables.arn, "${aws_s3_bucket.tables.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "tables" {
  bucket     = aws_s3_bucket.tables.id
  policy     = data.aws_iam_policy_document.bucket.json
  depends_on = [aws_s3_bucket_public_access_block.tables]
}

locals {
  objects_arn = "${aws_s3_bucket.tables.arn}/${var.table_prefix}/*"
  kms_actions = {
    writer = ["kms:Decrypt", "kms:GenerateDataKey"]
    reader = ["kms:Decrypt"]
  }
}

# Writers: publish, rollback, delete, gc (conditional PutObject needs no more than s3:PutObject).
# Readers: get, list tasks, history.
data "aws_iam_policy_document" "table" {
  for_each = local.kms_actions

  statement {
    sid       = "ListTablePrefixOnly"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.tables.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.table_prefix}/*"]
    }
  }

  statement {
    sid       = "TableObjects"
    actions   = each.key == "writer" ? ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"] : ["s3:GetObject"]
    resources = [local.objects_arn]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "TableKmsKey"
      actions   = each.value
      resources = [statement.value]
    }
  }
}

resource "aws_iam_policy" "table" {
  for_each    = local.kms_actions
  name        = "promptray-tables-${each.key}-${var.bucket_name}"
  description = "promptray prompt tables under s3://${var.bucket_name}/${var.table_prefix}/ (${each.key})"
  policy      = data.aws_iam_policy_document.table[each.key].json
}

output "bucket" {
  value = aws_s3_bucket.tables.id
}

output "table_uri_prefix" {
  value = "s3://${aws_s3_bucket.tables.id}/${var.table_prefix}/"
}

output "writer_policy_arn" {
  value = aws_iam_policy.table["writer"].arn
}

output "reader_policy_arn" {
  value = aws_iam_policy.table["reader"].arn
}
