from diffier_cli.app import main

main()
