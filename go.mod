module migrate

go 1.26.8

require (
	github.com/hashicorp/yamux v0.1.2
	github.com/klauspost/compress v1.20.4 // indirect
	github.com/spf13/pflag v1.1.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
