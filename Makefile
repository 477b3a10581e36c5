.PHONY: book test setup regen
setup:            ## create .venv and install the package with its extras
	bash scripts/setup.sh
book:             ## run every chapter, write build/, print the results summary (ARGS="--only 01 --profile ci")
	bash scripts/book.sh $(ARGS)
test:             ## unit tests + strict nbval over chapters/ and exercises/ (what CI runs)
	bash scripts/test.sh
regen:            ## regenerate the stored outputs of every notebook (CI environment)
	bash scripts/setup.sh && .venv/bin/python tools/regen_notebooks.py
