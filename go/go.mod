module tailor.local/tailor

go 1.19
